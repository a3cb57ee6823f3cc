//! Intra-op parallelism: one model run borrows the cores nothing else uses.
//!
//! A process-wide count of busy cores is shared by everything that runs
//! requests: a request counts one core while it runs ([`busy`]: the runtime
//! takes it around each plugin call, a native model run around itself, and a
//! thread counts once however deep it nests), and a model run may borrow the
//! cores left idle ([`borrow_idle`]) to split its heavy steps (pointwise and
//! dense GEMMs, inverted-residual blocks, the stem convolution) into bands of
//! output rows. On an idle gateway one request uses every core; under load,
//! every core already runs a request of its own, nothing is borrowed, and
//! there is no oversubscription.
//!
//! The helpers are a rayon pool of `cores - 1` threads; the borrowing thread
//! runs the first band itself.

use std::cell::Cell;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cores busy with requests or lent to a model run.
static BUSY: AtomicUsize = AtomicUsize::new(0);
/// Threads one model run may use; 0 means as many as there are cores.
static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's request is counted in [`BUSY`].
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Cores this process may run on (its CPU affinity, cgroup quota).
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the threads one model run may use (the gateway's `intra_op_threads`;
/// 0 = every core, 1 = never split a run).
pub fn set_intra_op_threads(n: usize) {
    MAX_THREADS.store(n, Ordering::Relaxed);
}

/// The threads one model run may use at most.
pub fn intra_op_threads() -> usize {
    match MAX_THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n.min(cores()),
    }
}

/// This thread's request, counted as one busy core until dropped.
#[must_use = "the core counts as busy only while the guard lives"]
pub struct Busy {
    counted: bool,
}

/// Counts the calling thread's request as one busy core, unless it already
/// is (a model run inside a plugin call).
pub fn busy() -> Busy {
    if COUNTED.get() {
        return Busy { counted: false };
    }
    COUNTED.set(true);
    BUSY.fetch_add(1, Ordering::AcqRel);
    Busy { counted: true }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.counted {
            BUSY.fetch_sub(1, Ordering::AcqRel);
            COUNTED.set(false);
        }
    }
}

/// The calling thread's request, counted as idle until dropped: for what blocks on I/O inside
/// a request (an escalation waiting on its center), so that a model run elsewhere may borrow
/// the core meanwhile, as it would if the request were on another machine. Nothing happens if
/// the thread's request is not counted.
#[must_use = "the core counts as idle only while the guard lives"]
pub struct Waiting {
    released: bool,
}

/// Counts the calling thread's request as idle while it waits (see [`Waiting`]).
pub fn waiting() -> Waiting {
    if !COUNTED.get() {
        return Waiting { released: false };
    }
    COUNTED.set(false);
    BUSY.fetch_sub(1, Ordering::AcqRel);
    Waiting { released: true }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.released {
            BUSY.fetch_add(1, Ordering::AcqRel);
            COUNTED.set(true);
        }
    }
}

/// Idle cores lent to one model run, returned when dropped.
#[must_use = "the cores are lent only while the guard lives"]
pub struct Helpers {
    n: usize,
}

impl Helpers {
    /// Threads the run may use: itself and its helpers.
    pub fn threads(&self) -> usize {
        1 + self.n
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        if self.n > 0 {
            BUSY.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// Borrows up to `intra_op_threads() - 1` cores that no request is using.
/// The caller's own core must already be counted ([`busy`]).
pub fn borrow_idle() -> Helpers {
    let want = intra_op_threads().saturating_sub(1);
    if want == 0 || pool().is_none() {
        return Helpers { n: 0 };
    }
    let mut cur = BUSY.load(Ordering::Acquire);
    loop {
        let n = cores().saturating_sub(cur).min(want);
        if n == 0 {
            return Helpers { n: 0 };
        }
        match BUSY.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Helpers { n },
            Err(now) => cur = now,
        }
    }
}

/// The helper threads (`cores - 1`), built on first use; `None` on a single
/// core or if the threads cannot be started.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = cores().checked_sub(1).filter(|&n| n > 0)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(helpers)
            .thread_name(|i| format!("edgeplug-intra-op-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `f` on every part: the first on this thread, the others on the pool.
fn run_parts<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) {
    let mut rest = parts.into_iter();
    let Some(first) = rest.next() else {
        return;
    };
    match pool() {
        Some(pool) if rest.len() > 0 => pool.in_place_scope(|s| {
            let f = &f;
            for part in rest {
                s.spawn(move |_| f(part));
            }
            f(first);
        }),
        _ => {
            f(first);
            rest.for_each(&f);
        }
    }
}

/// Splits rows `0..rows` of `out` (`row_len` values each) into at most
/// `parts` bands whose boundaries are multiples of `align`, and runs
/// `f(band, the band's rows of out, scratch)` on each, one thread per band,
/// band `i` with the `i`-th item of `scratch`.
///
/// # Panics
///
/// If `scratch` has fewer items than there are bands.
pub(super) fn run_bands<S: Send>(
    out: &mut [f32],
    rows: usize,
    row_len: usize,
    (parts, align): (usize, usize),
    scratch: impl IntoIterator<Item = S>,
    f: impl Fn(Range<usize>, &mut [f32], S) + Sync,
) {
    let ranges = split(rows, parts, align);
    let bands = ranges.len();
    let outs = split_rows(out, &ranges, row_len);
    let work: Vec<_> = ranges
        .into_iter()
        .zip(outs)
        .zip(scratch)
        .map(|((band, out), s)| (band, out, s))
        .collect();
    assert_eq!(work.len(), bands, "run_bands: one scratch per band");
    run_parts(work, |(band, out, s)| f(band, out, s));
}

/// `0..n` in at most `parts` consecutive ranges of about equal length, every
/// boundary a multiple of `align`; no range is empty.
fn split(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let units = n.div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    let mut ranges = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        let end = ((units * (p + 1)).div_ceil(parts) * align).min(n);
        if end > start {
            ranges.push(start..end);
        }
        start = end;
    }
    ranges
}

/// Splits `out` into the `ranges` of rows (`row_len` values each) they name,
/// in order; the ranges must be consecutive from 0.
fn split_rows<'a>(
    mut out: &'a mut [f32],
    ranges: &[Range<usize>],
    row_len: usize,
) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = std::mem::take(&mut out).split_at_mut(r.len() * row_len);
        parts.push(head);
        out = tail;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once_on_aligned_boundaries() {
        for n in [0, 1, 7, 48, 49, 100, 12544] {
            for parts in 1..5 {
                for align in [1, 4, 6, 48] {
                    let ranges = split(n, parts, align);
                    assert!(ranges.len() <= parts);
                    let mut next = 0;
                    for r in &ranges {
                        assert_eq!(r.start, next, "{n} {parts} {align}: {ranges:?}");
                        assert!(!r.is_empty());
                        assert!(r.start % align == 0);
                        next = r.end;
                    }
                    assert_eq!(next, n, "{n} {parts} {align}: {ranges:?}");
                }
            }
        }
    }

    #[test]
    fn a_thread_counts_once_and_borrows_at_most_its_share() {
        let outer = busy();
        let inner = busy();
        assert!(outer.counted, "the first guard counts the thread");
        assert!(!inner.counted, "a nested guard does not count it again");
        drop(inner);
        assert!(COUNTED.get(), "the outer guard still counts it");
        let lent = borrow_idle();
        assert!(lent.threads() <= intra_op_threads());
        drop(lent);
        drop(outer);
        assert!(!COUNTED.get());
    }

    #[test]
    fn a_waiting_request_is_idle_until_it_resumes() {
        let none = waiting();
        assert!(
            !none.released,
            "no request on this thread: nothing to release"
        );
        drop(none);
        let request = busy();
        let wait = waiting();
        assert!(
            wait.released && !COUNTED.get(),
            "its core is idle while it waits"
        );
        drop(wait);
        assert!(COUNTED.get(), "and busy again after");
        drop(request);
        assert!(!COUNTED.get());
    }
}
