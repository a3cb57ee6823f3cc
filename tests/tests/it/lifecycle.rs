//! The gateway's life across pushes, restarts and full disks: `serve --install` after a push,
//! what a push leaves behind in memory (fds, RSS) and on disk (the compile cache), and a push
//! onto a full disk.
//!
//! The restart and leak tests run `edgeplug serve` in a child process (this test binary again,
//! calling the CLI's own `run_serve`, see [`serve_child`]): a restart is a new process, and
//! the fds and RSS measured are the gateway's alone, not the test harness's.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::SecretKey;
use edgeplug_tests::fixture;
use edgeplug_tests::gateway::*;
use hyper::Response;
use hyper::body::Bytes;

// ---- `edgeplug serve` in a child process ----

/// Set in a child's environment: the configuration path, then one `--install` path a line.
const CHILD_ENV: &str = "EDGEPLUG_LIFECYCLE_SERVE";

/// How long a child may take to start listening (it compiles and self-tests its plugins; a
/// debug build under a loaded machine is slow). Only detects a hang.
const START_DEADLINE: Duration = Duration::from_secs(300);

/// `edgeplug serve --config C --install B...`, run by [`ServedGateway::start`] in a child
/// process; does nothing without [`CHILD_ENV`]. Exits with the command's exit status.
#[test]
#[ignore = "child process of the lifecycle tests"]
fn serve_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    edgeplug::cli::init_tracing();
    let mut lines = spec.lines();
    let config = PathBuf::from(lines.next().expect("a configuration path"));
    let args = edgeplug::cli_serve::ServeArgs {
        config: Some(config),
        listen: None,
        install: lines.map(PathBuf::from).collect(),
    };
    // What `edgeplug::cli::main` does with the result.
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

/// A gateway running `serve` in a child process.
pub(crate) struct ServedGateway {
    child: Child,
    addr: SocketAddr,
    /// Everything the child wrote to stderr so far.
    stderr: Arc<Mutex<String>>,
}

/// Why a child did not come up: it exited first, with this status and stderr.
#[derive(Debug)]
pub(crate) struct DidNotStart {
    status: ExitStatus,
    stderr: String,
}

impl ServedGateway {
    /// Runs `serve --config config --install install...` and waits until it listens.
    pub(crate) fn start(config: &Path, install: &[PathBuf]) -> Result<ServedGateway, DidNotStart> {
        let mut spec = config.display().to_string();
        for path in install {
            spec.push('\n');
            spec.push_str(&path.display().to_string());
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "lifecycle::serve_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test binary runs again");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        // Drains stderr for the child's whole life (a full pipe would block it) and reports
        // the address from `serve`'s "edgeplug gateway on http://ADDR serving ..." line.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("edgeplug gateway on http://")
                    && let Some(addr) = rest.split_whitespace().next()
                    && let Ok(addr) = addr.parse()
                {
                    let _ = tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    return Ok(ServedGateway {
                        child,
                        addr,
                        stderr,
                    });
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Err(DidNotStart {
                    status,
                    stderr: stderr.lock().unwrap().clone(),
                });
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "serve did not listen within {START_DEADLINE:?}: {}",
                stderr.lock().unwrap()
            );
        }
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: the gateway dies at once, whatever it was doing.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (the gateway finishes in-flight requests and exits 0).
    pub(crate) fn stop(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet, so
        // the pid cannot name another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM not delivered");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve did not stop on SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open file descriptors of the gateway process.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Memory images wasmtime made for components compiled in memory, by the fds naming one.
    fn memory_image_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains("wasm-memory-image"))
            .count()
    }

    /// Resident set size of the gateway process, bytes (`VmRSS` of /proc/PID/status).
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub(crate) async fn send(&self, request: hyper::Request<ChunkedBody>) -> Response<Bytes> {
        let url = format!("http://{}/", self.addr).parse().unwrap();
        let mut connection = Connection::open(&url, None).await.unwrap();
        connection.send(request).await.unwrap()
    }

    async fn push(&self, name: &str, bundle: Vec<u8>) -> Response<Bytes> {
        self.send(
            req("PUT", &format!("/v1/admin/plugins/{name}"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(bundle))
                .unwrap(),
        )
        .await
    }

    async fn rollback(&self, name: &str) -> Response<Bytes> {
        self.send(
            req("POST", &format!("/v1/admin/plugins/{name}/rollback"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await
    }

    /// The digits plugin's answer to seven.json: its label and the version that answered.
    async fn ask_seven(&self) -> (i64, String) {
        let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
        let r = self
            .send(
                req("POST", "/v1/plugins/digits/infer")
                    .header("content-type", "application/json")
                    .body(ChunkedBody::new(seven))
                    .unwrap(),
            )
            .await;
        assert_status(&r, 200);
        (
            json_of(&r)["label"].as_i64().unwrap(),
            header(&r, "x-edgeplug-version").to_string(),
        )
    }

    /// The active version of `name` and its bundle's sha-256, from `GET /v1/plugins`.
    async fn active(&self, name: &str) -> Option<(String, String)> {
        let r = self
            .send(
                req("GET", "/v1/plugins")
                    .body(ChunkedBody::new(Vec::new()))
                    .unwrap(),
            )
            .await;
        assert_status(&r, 200);
        let listing = json_of(&r);
        let plugin = listing["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?
            .clone();
        Some((
            plugin["active"]["version"].as_str()?.to_string(),
            plugin["active"]["bundle_sha256"].as_str()?.to_string(),
        ))
    }
}

impl Drop for ServedGateway {
    fn drop(&mut self) {
        // A test that failed midway must not leave its gateway running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A state directory trusting a fresh key, and a configuration for it.
struct Site {
    dir: tempfile::TempDir,
    key: Arc<SecretKey>,
    config: PathBuf,
}

impl Site {
    fn new(config_extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (key, config) = write_gateway_dir(dir.path(), config_extra);
        Site { dir, key, config }
    }

    /// Writes `bytes` as a bundle file in the site's directory.
    fn bundle_file(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

/// A digits bundle of `version` whose self-test expects the wrong label: it is compiled,
/// instantiated and self-tested before the push is refused.
fn failing_self_test(key: &SecretKey, version: &str) -> Vec<u8> {
    bundle_with(key, version, |dir| {
        let path = dir.join("selftest/seven.expected.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"label\":7", "\"label\":3", 1)).unwrap();
    })
}

// ---- finding 3: no leak per push ----

/// The push of index `i` in [`pushes_free_what_they_built`]: what it sends and what the
/// gateway must answer. Versions are `1.x.y` from the index, so accepted ones only grow.
fn push_plan(i: usize) -> (&'static str, String, u16) {
    let version = format!("1.{}.{}", i / 10, i % 10);
    match i % 5 {
        // Refused after compile, instantiation and self-test: must free all it built.
        1 | 3 => ("failing self-test", version, 422),
        // Refused before compiling anything (not newer than the active version).
        4 => ("not newer", "0.1.0".to_string(), 409),
        _ => ("accepted", version, 200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_free_what_they_built() {
    let site = Site::new("");
    let base = site.bundle_file("digits-0.1.0.epk", &digits_bundle(&site.key, "0.1.0"));
    let gw = ServedGateway::start(&site.config, &[base]).unwrap();
    let key = site.key.clone();
    let mut samples = Vec::new();
    for i in 0..50 {
        let (what, version, status) = push_plan(i);
        let bundle = {
            let (key, version) = (key.clone(), version.clone());
            tokio::task::spawn_blocking(move || match what {
                "failing self-test" => failing_self_test(&key, &version),
                _ => digits_bundle(&key, &version),
            })
            .await
            .unwrap()
        };
        let r = gw.push("digits", bundle).await;
        assert_eq!(
            r.status().as_u16(),
            status,
            "push {i} ({what} {version}): {}",
            String::from_utf8_lossy(r.body())
        );
        if i % 10 == 9 {
            // A rollback and a push back: a kept version returns, then is kept again.
            assert_status(&gw.rollback("digits").await, 200);
        }
        // Requests on whatever is active, so its instances (and pooling slots) are used.
        for _ in 0..5 {
            assert_eq!(gw.ask_seven().await.0, 7);
        }
        if i == 4 || i == 49 {
            samples.push((i + 1, gw.open_fds(), gw.rss_bytes(), gw.memory_image_fds()));
        }
    }
    for (pushes, fds, rss, images) in &samples {
        println!(
            "after {pushes} pushes: {fds} fds ({images} memory images), RSS {:.1} MiB",
            *rss as f64 / (1 << 20) as f64
        );
    }
    let (_, fds_5, rss_5, images_5) = samples[0];
    let (_, fds_50, rss_50, images_50) = samples[1];
    // Only the active version and the kept ones (keep_versions = 3) may hold memory images,
    // whatever the number of pushes: 45 more pushes, 18 of them accepted and 18 refused after
    // compiling, must not add any fd (±2 for a connection or an epoll fd of the runtime's).
    assert!(
        fds_50 <= fds_5 + 2,
        "open fds grew from {fds_5} after 5 pushes to {fds_50} after 50"
    );
    assert!(
        images_50 <= images_5.max(3),
        "memory images grew from {images_5} after 5 pushes to {images_50} after 50"
    );
    // RSS: each compiled digits version is ~2-8 MiB (code, memory image, instance slot); 45
    // pushes that each leaked one would add 100+ MiB (the leak measured +90 MiB). 25 MiB of
    // slack covers allocator fragmentation and the idle pooling slots the runtime keeps
    // resident (up to 4 MiB each; few here, where one request runs at a time).
    assert!(
        rss_50 <= rss_5 + (25 << 20),
        "RSS grew from {:.1} MiB after 5 pushes to {:.1} MiB after 50",
        rss_5 as f64 / (1 << 20) as f64,
        rss_50 as f64 / (1 << 20) as f64
    );
    assert_eq!(gw.stop().code(), Some(0));
}

// ---- finding 1: `serve --install` after a push ----

/// The scenario: `serve --install digits-0.1.0.epk`, a push of 0.2.0, stop, the same
/// command again. Then what an equal or tampered bundle on that command line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_install_after_a_push_restarts_on_the_pushed_version() {
    let site = Site::new("");
    let base = site.bundle_file("digits-0.1.0.epk", &digits_bundle(&site.key, "0.1.0"));
    let install = [base.clone()];

    let gw = ServedGateway::start(&site.config, &install).unwrap();
    assert!(
        gw.stderr().contains("installed digits 0.1.0"),
        "{}",
        gw.stderr()
    );
    assert_eq!(gw.ask_seven().await, (7, "0.1.0".to_string()));
    assert_status(
        &gw.push("digits", digits_bundle(&site.key, "0.2.0")).await,
        200,
    );
    let (_, pushed_sha) = gw.active("digits").await.unwrap();
    assert_eq!(gw.stop().code(), Some(0));

    // The same command line: 0.1.0 is older than the active 0.2.0, so already satisfied.
    let gw = ServedGateway::start(&site.config, &install)
        .unwrap_or_else(|e| panic!("the restart failed: {e:?}"));
    assert!(
        gw.stderr().contains(
            "already satisfied: {} is digits 0.1.0; the active version 0.2.0 stays"
                .replace("{}", &base.display().to_string())
                .as_str()
        ),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        gw.active("digits").await,
        Some(("0.2.0".into(), pushed_sha.clone()))
    );
    assert_eq!(gw.ask_seven().await, (7, "0.2.0".to_string()));
    assert_eq!(gw.stop().code(), Some(0));

    // The active version itself, signed by another trusted key: the same content, satisfied.
    let other_key = SecretKey::generate();
    std::fs::write(
        site.dir.path().join("trust/other.pub"),
        other_key.public_key().to_pem(),
    )
    .unwrap();
    let resigned = site.bundle_file(
        "digits-0.2.0-resigned.epk",
        &digits_bundle(&other_key, "0.2.0"),
    );
    let gw = ServedGateway::start(&site.config, &[base.clone(), resigned]).unwrap();
    assert!(
        gw.stderr().contains("the active version 0.2.0 stays"),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        gw.active("digits").await,
        Some(("0.2.0".into(), pushed_sha.clone()))
    );
    assert_eq!(gw.stop().code(), Some(0));

    // The refusals: each exits 1 before listening, with the reason, and changes nothing.
    let mut tampered = std::fs::read(&base).unwrap();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    let untrusted = SecretKey::generate();
    let refusals = [
        (
            "tampered older bundle",
            site.bundle_file("digits-0.1.0-tampered.epk", &tampered),
            "bad signature",
        ),
        (
            "untrusted older bundle",
            site.bundle_file(
                "digits-0.1.0-untrusted.epk",
                &digits_bundle(&untrusted, "0.1.0"),
            ),
            "not in the trust store",
        ),
        (
            "same version, other content",
            site.bundle_file(
                "digits-0.2.0-other.epk",
                &bundle_with(&site.key, "0.2.0", |dir| {
                    let path = dir.join("plugin.toml");
                    let text = std::fs::read_to_string(&path).unwrap();
                    let changed = text.replacen("deadline_ms = 2000", "deadline_ms = 1999", 1);
                    assert_ne!(text, changed);
                    std::fs::write(&path, changed).unwrap();
                }),
            ),
            "must not share a version",
        ),
    ];
    for (what, file, reason) in refusals {
        let refused = ServedGateway::start(&site.config, &[base.clone(), file])
            .err()
            .unwrap_or_else(|| panic!("{what}: serve started"));
        assert_eq!(refused.status.code(), Some(1), "{what}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(reason),
            "{what}: {}",
            refused.stderr
        );
        assert!(
            !refused.stderr.contains("panicked") && !refused.stderr.contains("stack backtrace"),
            "{what}: {}",
            refused.stderr
        );
    }
    let gw = ServedGateway::start(&site.config, &install).unwrap();
    assert_eq!(
        gw.active("digits").await,
        Some(("0.2.0".into(), pushed_sha))
    );
    assert_eq!(gw.stop().code(), Some(0));
}

// ---- finding 4: a bounded compile cache, and a full disk ----

/// `.cwasm` entries of a state directory's compile cache: (count, total bytes).
fn cache_entries(state: &Path) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(state.join("cache")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().ends_with(".cwasm") {
            count += 1;
            bytes += entry.metadata().unwrap().len();
        }
    }
    (count, bytes)
}

/// Names starting with `.tmp-` anywhere under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_holds_only_stored_versions_within_its_bound() {
    let mut gw = TestGateway::start("keep_versions = 3\n").await;
    let key = gw.key.clone();
    let state = gw.dir.path().join("state");
    // A partial entry a crashed writer (a process that no longer runs) left behind.
    let stray = state.join(format!("cache/.tmp-{}-00ff", u32::MAX));
    std::fs::write(&stray, b"partial").unwrap();
    let mut sizes = Vec::new();
    for (i, version) in [
        "1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0", "1.7.0",
    ]
    .iter()
    .enumerate()
    {
        assert_status(&gw.push("digits", digits_bundle(&key, version)).await, 200);
        if i % 2 == 1 {
            // Refused after compiling: its entry must not stay.
            let refused = gw
                .push("digits", failing_self_test(&key, &format!("1.{i}.5")))
                .await;
            assert_status(&refused, 422);
        }
        sizes.push(cache_entries(&state));
    }
    assert_status(&gw.rollback("digits").await, 200);
    for (pushes, (count, bytes)) in sizes.iter().enumerate() {
        println!(
            "after {} accepted pushes: {count} cache entries, {:.2} MiB",
            pushes + 1,
            *bytes as f64 / (1 << 20) as f64
        );
    }
    // Three versions stay in the store (keep_versions), so three entries, whatever the
    // number of pushes.
    let (count, bytes) = cache_entries(&state);
    assert_eq!(count, 3, "entries: {sizes:?}");
    assert!(sizes[2..].iter().all(|&(c, _)| c == 3), "{sizes:?}");
    let stored: usize = std::fs::read_dir(state.join("plugins/digits"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".epk")
        })
        .count();
    assert_eq!(stored, 3);
    gw.stop().await;
    drop(gw.gateway);

    // Restarted with a bound below one entry: only the loaded version's entry may stay (a
    // live entry is never evicted), the kept versions' go.
    std::fs::write(
        gw.dir.path().join("gateway.toml"),
        gateway_toml("cache_max_mib = 0\n"),
    )
    .unwrap();
    let config = edgeplug_gateway::Config::load(&gw.dir.path().join("gateway.toml")).unwrap();
    let dir = gw.dir;
    let gw = TestGateway::serve(config, key, dir).await;
    assert!(!stray.exists(), "the stray temp file survived a restart");
    let (count, left) = cache_entries(&state);
    assert_eq!(count, 1, "the loaded version's entry only");
    assert!(left < bytes);
    assert_eq!(gw.active_version("digits").await.as_deref(), Some("1.6.0"));
}

/// A tmpfs mounted on a directory for the life of the guard (lazily unmounted on drop, so
/// mappings of its files that outlive the test do not keep it busy).
struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m") on `dir`; `None`, with the reason printed, when
    /// this process may not mount (not root, or no CAP_SYS_ADMIN in a container).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        use std::os::unix::ffi::OsStrExt as _;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let options = std::ffi::CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            println!(
                "SKIPPED: cannot mount a tmpfs on {} ({}); run as root to test a full disk",
                dir.display(),
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path this guard mounted.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes to `path` until the disk is full; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 4096];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_onto_a_full_disk_answers_507_and_changes_nothing() {
    // Dropped last: the mount goes before the directory it is mounted in.
    let site = Site::new("");
    let state = site.state();
    std::fs::create_dir(&state).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&state, "8m") else {
        return;
    };
    let config = edgeplug_gateway::Config::load(&site.config).unwrap();
    let mut gw = TestGateway::serve(config, site.key.clone(), tempfile::tempdir().unwrap()).await;
    let key = site.key.clone();
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    assert_status(&gw.push("digits", digits_bundle(&key, "1.0.0")).await, 200);

    let next = digits_bundle(&key, "1.1.0");
    let filler = state.join("filler");
    let filled = fill_disk(&filler);
    println!("the state directory's disk filled with {filled} more bytes");
    let refused = gw.push("digits", next.clone()).await;
    assert_status(&refused, 507);
    assert_eq!(error_code(&refused), "insufficient-storage");
    assert!(
        json_of(&refused)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{}",
        String::from_utf8_lossy(refused.body())
    );
    // Up, on the same version, and nothing partial left on the disk.
    assert_eq!(gw.active_version("digits").await.as_deref(), Some("1.0.0"));
    let answer = gw
        .post(
            "/v1/plugins/digits/infer",
            "application/json",
            seven.clone(),
        )
        .await;
    assert_status(&answer, 200);
    assert_eq!(json_of(&answer)["label"], 7);
    assert_eq!(header(&answer, "x-edgeplug-version"), "1.0.0");
    assert_eq!(temp_files(&state), Vec::<PathBuf>::new());
    assert!(!state.join("plugins/digits/1.1.0.epk").exists());
    assert_eq!(
        std::fs::read_to_string(state.join("plugins/digits/active")).unwrap(),
        "1.0.0\n"
    );

    // Room for the bundle's pages exactly (tmpfs counts 4 KiB pages): its write succeeds, the
    // `active` file's then fails. The store takes the bundle back: nothing changed.
    let pages = (next.len() as u64).div_ceil(4096);
    let filler_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    filler_file.set_len(filled - pages * 4096).unwrap();
    drop(filler_file);
    let refused = gw.push("digits", next.clone()).await;
    assert_status(&refused, 507);
    assert_eq!(error_code(&refused), "insufficient-storage");
    assert!(
        !state.join("plugins/digits/1.1.0.epk").exists(),
        "a refused install left its bundle in the store"
    );
    assert_eq!(gw.active_version("digits").await.as_deref(), Some("1.0.0"));
    assert_eq!(temp_files(&state), Vec::<PathBuf>::new());

    // Space again: the same push succeeds.
    std::fs::remove_file(&filler).unwrap();
    assert_status(&gw.push("digits", next).await, 200);
    let answer = gw
        .post("/v1/plugins/digits/infer", "application/json", seven)
        .await;
    assert_eq!(header(&answer, "x-edgeplug-version"), "1.1.0");
    gw.stop().await;
}
