//! Answers `{"served": N}`, N being how many requests this instance has served, this one
//! included: 1 on a fresh instance, more when the runtime kept the instance
//! (`requests_per_instance` in the manifest). A body `trap` makes it trap instead, so tests can
//! check that an instance that trapped is never kept.

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
        Ok(Response::new(
            "application/json",
            format!("{{\"served\": {served}}}").into_bytes(),
        ))
    }
}

export!(Counter);
