//! `edgeplug serve` in a child process pinned to one CPU, with one tokio worker, for the
//! benchmarks whose figures must be the gateway's alone: the benchmark binary runs itself
//! again, and [`serve_child`] (called first in its `main`) turns that run into the gateway.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set in a child's environment: `CPU\nCONFIG\nLISTEN\nBUNDLE...` (`LISTEN` `-` for the
/// configuration's own).
const CHILD_ENV: &str = "EDGEPLUG_BENCH_PINNED_SERVE";

/// In the child: pins this process to its CPU, then runs `serve --config C [--listen L]
/// --install B...` and exits with its status. Does nothing in a process not started by
/// [`PinnedGateway::start`].
pub fn serve_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut lines = spec.lines();
    let cpu: usize = lines.next().unwrap().parse().unwrap();
    pin_to(cpu);
    edgeplug::cli::init_tracing();
    let config = Some(PathBuf::from(lines.next().unwrap()));
    let listen = match lines.next().unwrap() {
        "-" => None,
        addr => Some(addr.parse().unwrap()),
    };
    let args = edgeplug::cli_serve::ServeArgs {
        config,
        listen,
        install: lines.map(PathBuf::from).collect(),
    };
    let code = match edgeplug::cli_serve::run_serve(args) {
        Ok(code) if code == std::process::ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

/// Restricts the calling thread (and every thread it starts afterwards) to `cpu`.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu is one of
    // the CPUs sched_getaffinity reported, below CPU_SETSIZE); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let pinned = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(pinned, 0, "sched_setaffinity({cpu}) failed");
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set that sched_getaffinity fills; CPU_ISSET
    // reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let got = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(got, 0, "sched_getaffinity failed");
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The 1-minute load average: other work on the machine skews every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A gateway child process; killed if dropped before [`PinnedGateway::stop`].
pub struct PinnedGateway {
    child: Child,
    name: String,
    stderr: Arc<Mutex<String>>,
}

impl PinnedGateway {
    /// Starts `serve` with `config` (and `listen`, if given) on `cpu`, installing `bundle`,
    /// and waits until it listens; `name` is for messages.
    pub fn start(
        name: &str,
        cpu: usize,
        config: &Path,
        listen: Option<SocketAddr>,
        bundle: &Path,
    ) -> PinnedGateway {
        let listen = listen.map_or_else(|| "-".to_string(), |a| a.to_string());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD_ENV,
                format!(
                    "{cpu}\n{}\n{listen}\n{}",
                    config.display(),
                    bundle.display()
                ),
            )
            .env("TOKIO_WORKER_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the benchmark binary runs again");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        // Drains stderr for the child's whole life and reports `serve`'s "edgeplug gateway on"
        // line.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("edgeplug gateway on ") {
                    let _ = tx.send(());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let started = Instant::now();
        while rx.recv_timeout(Duration::from_millis(100)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("{name} exited ({status}): {}", stderr.lock().unwrap());
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name} did not listen within 120 s: {}",
                stderr.lock().unwrap()
            );
        }
        PinnedGateway {
            child,
            name: name.to_string(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on a child of ours not reaped yet: the pid names no other process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not stop on SIGTERM: {}",
                self.name,
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PinnedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
