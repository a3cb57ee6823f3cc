//! Real servers for the fleet tests, never the system's services: an OCI registry (Debian's
//! `docker-registry`, CNCF distribution 2.8) and an MQTT broker (Debian's `mosquitto`), each
//! a child process on a free loopback port with its own configuration and storage in a
//! temporary directory, stopped when dropped. `make test` installs both packages.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_listening(addr: SocketAddr, child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {addr}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {addr} after 20 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks a child to stop (SIGTERM, so mosquitto writes its persistence file) and waits;
/// SIGKILL after 10 s.
fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill takes plain integers and touches no memory; `pid` is our own child, not
    // yet reaped (try_wait said it runs), so the id cannot belong to another process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn which(program: &str, fallback: &str) -> PathBuf {
    let path = Path::new(fallback);
    if path.is_file() {
        return path.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{program} is not installed: apt-get install -y {program} (make test does)")
        })
}

/// A CNCF distribution registry on 127.0.0.1, storing in a temporary directory.
pub struct TestRegistry {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        let binary = which("docker-registry", "/usr/bin/docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: edgeplug-test-secret\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry starts");
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut child,
            &dir.path().join("registry.err"),
            "docker-registry",
        );
        TestRegistry { port, child, dir }
    }

    /// `127.0.0.1:PORT`, as a gateway's `[fleet] registry` names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's process id (its memory and CPU figures in /proc, for benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the registry keeps the blob `digest` (`sha256:…`) on disk: tests corrupt it to
    /// play a registry serving other bytes.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A mosquitto broker on 127.0.0.1 with persistence in a temporary directory; it can be
/// stopped and started again on the same port and directory (a broker restart).
pub struct TestBroker {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        TestBroker::start_with("")
    }

    /// A broker whose mosquitto.conf ends with `extra` (a bridge, limits).
    pub fn start_with(extra: &str) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // Started as root, mosquitto drops to the user `mosquitto`, and then silently loses
        // its persistence unless it can write (and reach) this directory.
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let status = Command::new("chown")
                .arg("mosquitto:")
                .arg(&data)
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "chown mosquitto: {} failed",
                data.display()
            );
        }
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\n\
                 persistence_location {}/\nlog_dest stderr\nlog_type error\nlog_type warning\n{}{extra}",
                data.display(),
                if std::env::var_os("EDGEPLUG_TEST_BROKER_LOGS").is_some() {
                    "log_type all\n"
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        let mut broker = TestBroker {
            port,
            child: None,
            dir,
        };
        broker.restart();
        broker
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's process id (its memory and CPU figures in /proc, for benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Stops the broker (SIGTERM: it writes its persistence file first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Starts it (again) on the same port, configuration and persistence directory.
    pub fn restart(&mut self) {
        self.stop();
        let binary = which("mosquitto", "/usr/sbin/mosquitto");
        let log = self.dir.path().join("mosquitto.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("mosquitto starts");
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            &mut child,
            &log,
            "mosquitto",
        );
        self.child = Some(child);
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
        // For debugging a test: EDGEPLUG_TEST_BROKER_LOGS=DIR keeps every broker's log there.
        if let Ok(dir) = std::env::var("EDGEPLUG_TEST_BROKER_LOGS") {
            let _ = std::fs::copy(
                self.dir.path().join("mosquitto.log"),
                Path::new(&dir).join(format!("mosquitto-{}.log", self.port)),
            );
        }
    }
}
