//! Answers `{"served": N}`, N being how many requests this instance has served, this one
//! included: 1 on a fresh instance, more when the runtime kept the instance
//! (`requests_per_instance` in the manifest). A body `trap` makes it trap instead, so tests can
//! check that an instance that trapped is never kept, and a body `grow N` makes it touch N MiB
//! of its memory before it answers, so they can check that a grown instance is not kept.

use std::sync::atomic::{AtomicU32, Ordering};

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

static SERVED: AtomicU32 = AtomicU32::new(0);

struct Counter;

impl Plugin for Counter {
    fn describe() -> PluginInfo {
        PluginInfo::new("counter", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        if request.body == b"trap" {
            panic!("asked to trap after {served} requests");
        }
        if let Some(mib) = request.body.strip_prefix(b"grow ") {
            let mib: usize = std::str::from_utf8(mib)
                .ok()
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| Error::invalid_argument("grow takes a number of MiB"))?;
            let block = vec![1u8; mib << 20];
            std::hint::black_box(&block);
        }
        Ok(Response::new(
            "application/json",
            format!("{{\"served\": {served}}}").into_bytes(),
        ))
    }
}

export!(Counter);
