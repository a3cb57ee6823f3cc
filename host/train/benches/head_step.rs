//! The cost of a head's training step: steps per second of `loss_and_grad` + `Optimizer::step`
//! (Adam, batch 32, one thread) and the host memory of a step, for 10 and 1,000 classes on 128-
//! and 1,280-wide features.
//!
//! Memory is measured, not computed: a counting global allocator tracks the bytes live on the
//! heap. "held" is what stays live between steps once Adam has its moments (weights + both
//! moments); "peak" is the most live at any moment of a step (held + gradients + logits and
//! their gradient + the new weights and moments a step writes before it commits them), both
//! less what was live before the head was made: the input batch (the caller's) and the GEMM
//! library's per-thread packing buffer (printed on its own) are not counted. The formula
//! `byte_size` gives (weights + Adam's two moments + one step's gradients) is printed beside
//! them.
//!
//! `cargo bench -p edgeplug-train --bench head_step` (`EDGEPLUG_BENCH_SECS` per case, default 3;
//! the median of 5 blocks is printed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgeplug_kernels::Tensor;
use edgeplug_train::rng::SplitMix64;
use edgeplug_train::{Head, HeadSpec, Optimizer, OptimizerConfig, OptimizerKind};

const BATCH: usize = 32;

/// The system allocator, counting the bytes live and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call forwards to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc` and `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block arriving before the old one goes, as a moving realloc
            // holds both for a moment.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts a new peak from what is live now.
fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn spec(features: usize, classes: usize) -> HeadSpec {
    HeadSpec {
        features,
        classes,
        hidden: None,
    }
}

fn adam() -> Optimizer {
    Optimizer::new(OptimizerConfig {
        kind: OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        lr: 1e-3,
        clip_norm: Some(1.0),
    })
    .unwrap()
}

/// A batch of random features, and labels covering the classes.
fn batch(features: usize, classes: usize) -> (Tensor, Vec<usize>) {
    let mut rng = SplitMix64::new(2);
    let x: Vec<f32> = (0..BATCH * features)
        .map(|_| rng.next_symmetric())
        .collect();
    let x = Tensor::from_f32(vec![BATCH, features], x).unwrap();
    (x, (0..BATCH).map(|i| i % classes).collect())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("EDGEPLUG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cases = [(128usize, 10usize), (128, 1000), (1280, 10), (1280, 1000)];
    // The GEMM library keeps a packing buffer per thread, grown to the largest product seen
    // and never freed. One step at every size first puts it in the baseline, so each case
    // counts only its own memory; the buffer is printed on its own line.
    let before_warm_up = live();
    for (features, classes) in cases {
        let (x, labels) = batch(features, classes);
        let mut head = Head::new(spec(features, classes), 1).unwrap();
        let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
        adam().step(&mut head, &grads).unwrap();
    }
    let kept = live() - before_warm_up;

    println!(
        "Adam step (loss_and_grad + step), batch {BATCH}, one thread; median of 5 blocks of {secs}/5 s"
    );
    println!(
        "memory: measured by a counting allocator (held between steps, peak within one), MB = 1e6 bytes"
    );
    println!(
        "{:>9} {:>8} {:>10} {:>10} {:>11} {:>11} {:>13}",
        "features", "classes", "steps/s", "ms/step", "held MB", "peak MB", "formula MB"
    );
    for (features, classes) in cases {
        let (x, labels) = batch(features, classes);
        // Everything live from here on belongs to the head, its optimizer or a step.
        let before = live();
        let mut head = Head::new(spec(features, classes), 1).unwrap();
        let mut optimizer = adam();
        // The first step allocates Adam's moments; the one measured is a later, steady one.
        let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
        optimizer.step(&mut head, &grads).unwrap();
        let grads_bytes = grads.byte_size();
        drop(grads);
        let held = live() - before;
        reset_peak();
        let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
        optimizer.step(&mut head, &grads).unwrap();
        drop(grads);
        let step_peak = peak() - before;
        let formula = head.byte_size() + optimizer.byte_size() + grads_bytes;

        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let mut steps = 0u64;
            while started.elapsed() < Duration::from_millis(secs * 200) {
                let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
                optimizer.step(&mut head, &grads).unwrap();
                steps += 1;
            }
            rates.push(steps as f64 / started.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let rate = rates[2];
        println!(
            "{features:>9} {classes:>8} {rate:>10.0} {:>10.3} {:>11.3} {:>11.3} {:>13.3}",
            1e3 / rate,
            mb(held),
            mb(step_peak),
            mb(formula)
        );
    }
    println!(
        "the GEMM library's per-thread packing buffer (kept between steps, shared by every head \
         on the thread, not in the figures above): {:.3} MB",
        mb(kept)
    );
}
