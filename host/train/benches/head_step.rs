//! The cost of a head's training step: steps per second (batch 32, Adam) and the host memory a
//! head holds (weights, Adam's two moments, one step's gradients), for 10 and 1,000 classes on
//! 128- and 1,280-wide features, one thread.
//!
//! `cargo bench -p edgeplug-train --bench head_step` (`EDGEPLUG_BENCH_SECS` per case, default 3;
//! the median of 5 blocks is printed).

use std::time::{Duration, Instant};

use edgeplug_kernels::Tensor;
use edgeplug_train::rng::SplitMix64;
use edgeplug_train::{Head, HeadSpec, Optimizer, OptimizerConfig, OptimizerKind};

const BATCH: usize = 32;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("EDGEPLUG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("Adam step, batch {BATCH}, one thread; median of 5 blocks of {secs}/5 s");
    println!(
        "{:>9} {:>8} {:>10} {:>12} {:>14}",
        "features", "classes", "steps/s", "ms/step", "host memory"
    );
    for features in [128usize, 1280] {
        for classes in [10usize, 1000] {
            let spec = HeadSpec {
                features,
                classes,
                hidden: None,
            };
            let mut head = Head::new(spec, 1).unwrap();
            let mut optimizer = Optimizer::new(OptimizerConfig {
                kind: OptimizerKind::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
                lr: 1e-3,
                clip_norm: Some(1.0),
            })
            .unwrap();
            let mut rng = SplitMix64::new(2);
            let x: Vec<f32> = (0..BATCH * features)
                .map(|_| rng.next_symmetric())
                .collect();
            let x = Tensor::from_f32(vec![BATCH, features], x).unwrap();
            let labels: Vec<usize> = (0..BATCH).map(|i| i % classes).collect();
            let mut grads_bytes = 0;
            let mut rates = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                let mut steps = 0u64;
                while started.elapsed() < Duration::from_millis(secs * 200) {
                    let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
                    grads_bytes = grads.byte_size();
                    optimizer.step(&mut head, &grads).unwrap();
                    steps += 1;
                }
                rates.push(steps as f64 / started.elapsed().as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            let rate = rates[2];
            let memory = head.byte_size() + optimizer.byte_size() + grads_bytes;
            println!(
                "{features:>9} {classes:>8} {rate:>10.0} {:>12.3} {:>11.2} MB",
                1e3 / rate,
                memory as f64 / 1e6
            );
        }
    }
}
