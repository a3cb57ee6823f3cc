//! Where a request's wasm runs: [`dispatch`] picks the lane (fast path, pool, demoted) and
//! records what the request says about its plugin version.
//!
//! Requests run on tokio's blocking pool. A plugin version whose request just exhausted its
//! deadline or a memory limit, or that trapped [`TRAP_STORM`] times within a second, is
//! *demoted* for [`DEMOTION`]: its requests run on a few threads at the lowest CPU priority
//! (nice 19) instead. A single trap does not demote: a plugin with a rare bug keeps its lane. The limits already end each such request; the
//! demotion bounds what the next ones cost everybody else, so on a 2-core edge box a plugin
//! that loops or thrashes memory gets only the CPU the well-behaved plugins leave idle.
//!
//! Admin work (verify, compile, self-test of a pushed version) also runs on its own
//! lower-priority thread, so a hot swap under load does not take the serving threads' CPU.
//!
//! A version whose requests all finish in microseconds earns the [`FastPath`]: its small
//! requests run on the reactor thread itself, which saves the two thread wake-ups of the
//! blocking pool (most of a trivial plugin's cost). The reactor is protected by a short
//! deadline: a fast-path run that exceeds [`FAST_PATH_BUDGET`] is stopped, the version loses
//! the fast path for good, and the request runs again on the pool with its full deadline
//! (a request is a pure function of its input on a fresh instance, so running it again is
//! safe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplug_runtime::{InferRequest, InferResponse, InvokeError, Misconduct};

use crate::Gateway;
use crate::registry::ActivePlugin;
use crate::shadow::ShadowCopy;

/// The longest the demoted lane rests after a request (it rests as long as the request ran).
pub const DEMOTED_REST_MAX: Duration = Duration::from_secs(1);

/// How long a version stays demoted after its last exhausted limit.
pub const DEMOTION: Duration = Duration::from_secs(30);

/// The longest a fast-path request may hold the reactor thread (rounded up to the epoch tick).
pub const FAST_PATH_BUDGET: Duration = Duration::from_millis(10);
/// Consecutive pool runs under the configured `fast_path_us` that earn the fast path.
pub const FAST_PATH_QUALIFY: u32 = 64;
/// Largest body sent down the fast path.
pub const FAST_PATH_MAX_BODY: usize = 64 << 10;

/// Whether a version's requests may run on the reactor thread.
#[derive(Debug, Default)]
pub struct FastPath {
    /// Quick runs in a row, or [`QUALIFIED`], or [`BANNED`].
    state: std::sync::atomic::AtomicU32,
}

const QUALIFIED: u32 = u32::MAX - 1;
const BANNED: u32 = u32::MAX;

impl FastPath {
    pub fn allows(&self) -> bool {
        self.state.load(Ordering::Relaxed) == QUALIFIED
    }

    /// Records how long a run on the pool took; runs under `quick` count towards the fast
    /// path (a zero `quick` never grants it).
    pub fn observe(&self, elapsed: Duration, quick: Duration) {
        let _ =
            self.state
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| match state {
                    QUALIFIED | BANNED => None,
                    _ if elapsed >= quick => Some(0),
                    n if n + 1 >= FAST_PATH_QUALIFY => Some(QUALIFIED),
                    n => Some(n + 1),
                });
    }

    /// A fast-path run overran its budget: never again for this version.
    pub fn ban(&self) {
        self.state.store(BANNED, Ordering::Relaxed);
    }
}

/// Traps within one second that demote a version.
pub const TRAP_STORM: u64 = 3;

/// A version's demotion state.
#[derive(Debug, Default)]
pub struct Demotion {
    /// Milliseconds after [`epoch`] until which the version is demoted; 0 when never.
    until_ms: AtomicU64,
    /// Start (ms after [`epoch`]) and count of the current one-second window of failures.
    window_start_ms: AtomicU64,
    failures_in_window: AtomicU64,
}

impl Demotion {
    pub fn is_demoted(&self) -> bool {
        now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// Records a failed request; returns whether the version is demoted because of it (and
    /// was not already).
    pub fn record(&self, misconduct: Misconduct) -> bool {
        let was = self.is_demoted();
        let demote = match misconduct {
            Misconduct::ExhaustedLimit => true,
            Misconduct::Failed => {
                let now = now_ms();
                let start = self.window_start_ms.load(Ordering::Relaxed);
                if now.saturating_sub(start) > 1000 {
                    self.window_start_ms.store(now, Ordering::Relaxed);
                    self.failures_in_window.store(1, Ordering::Relaxed);
                    false
                } else {
                    self.failures_in_window.fetch_add(1, Ordering::Relaxed) + 1 >= TRAP_STORM
                }
            }
        };
        if demote {
            self.demote();
        }
        demote && !was
    }

    /// Demotes (again) for [`DEMOTION`] from now.
    fn demote(&self) {
        self.until_ms
            .store(now_ms() + DEMOTION.as_millis() as u64, Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads at a lower CPU priority, fed by a bounded queue (a full queue refuses, it never
/// grows).
#[derive(Debug)]
pub struct LowPriorityPool {
    queue: SyncSender<Job>,
}

impl LowPriorityPool {
    /// `threads` threads named `name-N` at `nice` (1 to 19: higher is lower priority).
    pub fn new(
        name: &str,
        threads: usize,
        queue: usize,
        nice: i32,
    ) -> std::io::Result<LowPriorityPool> {
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    lower_this_threads_priority(nice);
                    loop {
                        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(LowPriorityPool { queue: sender })
    }

    /// Runs `job` on the pool; `None` when the queue is full.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        match self.queue.try_send(job) {
            Ok(()) => rx.await.ok(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_this_threads_priority(nice: i32) {
    // Linux nice values are per thread: PRIO_PROCESS with a thread id changes only that thread.
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        tracing::warn!(
            "cannot lower the priority of a low-priority thread: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority(_nice: i32) {}

/// Why [`dispatch`] gave no response.
#[derive(Debug)]
pub enum DispatchError {
    /// Every permit is taken (no queue), or the demoted lane's queue is full: retry later.
    Saturated(String),
    /// The plugin ran and failed.
    Failed(InvokeError),
}

/// The refusal of a request that found `plugin` busy with `what`.
fn saturated(plugin: &ActivePlugin, what: &str) -> DispatchError {
    DispatchError::Saturated(format!(
        "plugin {} {} is serving {what}; retry later",
        plugin.name(),
        plugin.version,
    ))
}

/// Runs a request on `plugin`: on the reactor thread for a fast-path version, else off the
/// reactor, bounded by its permits (refused when all are taken: no queue), at low CPU priority
/// while the version is demoted. Records demotions and metrics. A client's `timeout` (from
/// `started`) shorter than the plugin's deadline ends the run when it passes, as
/// [`InvokeError::TimedOut`], which is not held against the plugin.
pub async fn dispatch(
    gw: &Gateway,
    plugin: Arc<ActivePlugin>,
    request: InferRequest,
    started: Instant,
    timeout: Option<Duration>,
) -> Result<InferResponse, DispatchError> {
    let Ok(permit) = plugin.permits.clone().try_acquire_owned() else {
        let what = format!(
            "its limit of {} requests",
            plugin.plugin.shared().limits().concurrency
        );
        return Err(saturated(&plugin, &what));
    };
    let shadow = ShadowCopy::of(gw, &plugin, &request);
    let result = dispatch_with_permit(gw, plugin, request, started, timeout, permit).await;
    if let Some(shadow) = shadow {
        shadow.run_against(gw, &result);
    }
    result
}

/// [`dispatch`] for a caller that queues instead of being refused (the MQTT triggers, whose
/// messages wait at the broker anyway): waits for one of the version's permits, first come
/// first served, so a message is never starved by the requests that keep arriving.
pub async fn dispatch_queued(
    gw: &Gateway,
    plugin: Arc<ActivePlugin>,
    request: InferRequest,
    started: Instant,
) -> Result<InferResponse, DispatchError> {
    let Ok(permit) = plugin.permits.clone().acquire_owned().await else {
        return Err(DispatchError::Saturated(format!(
            "plugin {} {} is closing",
            plugin.name(),
            plugin.version
        )));
    };
    let shadow = ShadowCopy::of(gw, &plugin, &request);
    let result = dispatch_with_permit(gw, plugin, request, started, None, permit).await;
    if let Some(shadow) = shadow {
        shadow.run_against(gw, &result);
    }
    result
}

async fn dispatch_with_permit(
    gw: &Gateway,
    plugin: Arc<ActivePlugin>,
    request: InferRequest,
    started: Instant,
    timeout: Option<Duration>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<InferResponse, DispatchError> {
    let demoted = plugin.demotion.is_demoted();
    // A client's timeout shorter than the fast path's budget would read as the plugin being
    // slow: such a request goes to the pool.
    let roomy = timeout.is_none_or(|t| t.saturating_sub(started.elapsed()) >= FAST_PATH_BUDGET);
    // A version that may escalate never runs on the reactor: its host call would block the
    // reactor for as long as the center takes, and the fast path's short deadline would cut
    // the escalation off.
    let escalates = !plugin.plugin.shared().manifest().grants.upstream.is_empty();
    if !demoted
        && roomy
        && !escalates
        && plugin.fast_path.allows()
        && request.body.len() <= FAST_PATH_MAX_BODY
        && request.tensors.is_empty()
    {
        match plugin
            .plugin
            .infer_within(request.clone(), FAST_PATH_BUDGET)
        {
            Err(InvokeError::DeadlineExceeded { .. }) => {
                tracing::info!(plugin = plugin.name(), version = %plugin.version, "fast path overran its budget; running on the pool from now on");
                plugin.fast_path.ban();
            }
            result => {
                drop(permit);
                plugin.metrics.observe_run(started.elapsed());
                return finish(gw, &plugin, result, started);
            }
        }
    }
    let task_plugin = plugin.clone();
    let quick = Duration::from_micros(gw.config.fast_path_us);
    let job = move || {
        let ran = Instant::now();
        let result = match timeout {
            None => task_plugin.plugin.infer(request),
            Some(timeout) => run_within(&task_plugin, request, started, timeout),
        };
        let took = ran.elapsed();
        task_plugin.fast_path.observe(took, quick);
        task_plugin.metrics.observe_run(took);
        drop(permit);
        result
    };
    let result = if demoted {
        let resting = move || {
            let ran = Instant::now();
            let result = job();
            // The lane rests as long as the request ran, so a demoted version uses at most half
            // of one core, and also causes at most half the page faults and TLB shootdowns
            // (which reach every core whatever its priority) that it could.
            std::thread::sleep(ran.elapsed().min(DEMOTED_REST_MAX));
            result
        };
        match gw.demoted.run(resting).await {
            Some(result) => result,
            None => {
                return Err(saturated(
                    &plugin,
                    "at low priority after exhausting its limits, and its queue is full",
                ));
            }
        }
    } else {
        tokio::task::spawn_blocking(job)
            .await
            .unwrap_or_else(|e| Err(InvokeError::trap(format!("the request's task failed: {e}"))))
    };
    finish(gw, &plugin, result, started)
}

/// Records a finished request (demotion, metrics).
/// One run that ends when the client's `timeout` from `started` passes, if the plugin's own
/// deadline has not ended it first.
fn run_within(
    plugin: &ActivePlugin,
    request: InferRequest,
    started: Instant,
    timeout: Duration,
) -> Result<InferResponse, InvokeError> {
    let timed_out = || InvokeError::TimedOut {
        timeout_us: timeout.as_micros() as u64,
    };
    let left = timeout.saturating_sub(started.elapsed());
    let plugin_deadline = Duration::from_millis(plugin.plugin.shared().limits().deadline_ms);
    if left.is_zero() {
        return Err(timed_out());
    }
    if left >= plugin_deadline {
        return plugin.plugin.infer(request);
    }
    plugin
        .plugin
        .infer_within(request, left)
        .map_err(|e| match e {
            InvokeError::DeadlineExceeded { .. } => timed_out(),
            other => other,
        })
}

fn finish(
    gw: &Gateway,
    plugin: &ActivePlugin,
    result: Result<InferResponse, InvokeError>,
    started: Instant,
) -> Result<InferResponse, DispatchError> {
    if let Err(e) = &result
        && let Some(misconduct) = e.misconduct()
        && plugin.demotion.record(misconduct)
    {
        tracing::warn!(plugin = plugin.name(), version = %plugin.version, error = %e, "demoted to low CPU priority");
        gw.metrics
            .event("demotion", plugin.name(), &plugin.version.to_string());
    }
    let code = result.as_ref().err().map(InvokeError::code);
    plugin.metrics.observe(started.elapsed(), code);
    if result.as_ref().is_ok_and(|r| r.degraded) {
        gw.upstreams.metrics.degraded_answer(plugin.name());
    }
    result.map_err(DispatchError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demotion_lasts_and_is_reported_once_per_episode() {
        let demotion = Demotion::default();
        assert!(!demotion.is_demoted());
        assert!(demotion.record(Misconduct::ExhaustedLimit));
        assert!(
            !demotion.record(Misconduct::ExhaustedLimit),
            "already demoted"
        );
        assert!(demotion.is_demoted());
    }

    #[test]
    fn the_fast_path_is_earned_by_quick_runs_and_lost_for_good() {
        let quick = Duration::from_micros(50);
        let fast = FastPath::default();
        for _ in 0..FAST_PATH_QUALIFY - 1 {
            fast.observe(Duration::from_micros(20), quick);
        }
        fast.observe(quick, quick);
        assert!(!fast.allows(), "a slow run resets the count");
        for _ in 0..FAST_PATH_QUALIFY {
            fast.observe(Duration::from_micros(20), quick);
        }
        assert!(fast.allows());
        fast.ban();
        for _ in 0..2 * FAST_PATH_QUALIFY {
            fast.observe(Duration::from_micros(20), quick);
        }
        assert!(!fast.allows());
        let disabled = FastPath::default();
        for _ in 0..2 * FAST_PATH_QUALIFY {
            disabled.observe(Duration::ZERO, Duration::ZERO);
        }
        assert!(!disabled.allows(), "fast_path_us = 0 disables it");
    }

    #[test]
    fn one_trap_does_not_demote_a_storm_does() {
        let demotion = Demotion::default();
        assert!(!demotion.record(Misconduct::Failed));
        assert!(!demotion.record(Misconduct::Failed));
        assert!(!demotion.is_demoted());
        assert!(
            demotion.record(Misconduct::Failed),
            "the third trap within a second"
        );
        assert!(demotion.is_demoted());
        assert!(!demotion.record(Misconduct::Failed), "already demoted");
        let limit = Demotion::default();
        assert!(limit.record(Misconduct::ExhaustedLimit));
        let clean = edgeplug_runtime::InvokeError::Plugin {
            code: edgeplug_runtime::PluginErrorCode::InvalidArgument,
            message: String::new(),
        };
        assert_eq!(clean.misconduct(), None);
    }

    #[tokio::test]
    async fn the_pool_runs_jobs_at_low_priority_and_refuses_when_full() {
        let pool = LowPriorityPool::new("test-low", 1, 1, 19).unwrap();
        #[cfg(target_os = "linux")]
        {
            // SAFETY: as above; getpriority reads the calling thread's nice value.
            let nice = pool
                .run(|| unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                })
                .await
                .unwrap();
            assert_eq!(nice, 19);
        }
        // One job running, one queued: a third is refused.
        let pool = Arc::new(pool);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocked = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || wait.recv().ok()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.queue.try_send(Box::new(|| {})).is_ok(),
            "one queue slot free"
        );
        assert!(pool.run(|| ()).await.is_none(), "a full queue refuses");
        release.send(()).unwrap();
        assert_eq!(blocked.await.unwrap(), Some(Some(())));
    }
}
