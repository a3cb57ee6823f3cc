//! gRPC calls by method and status code, rendered into the gateway's `/metrics` (the plugin
//! versions' request counters and latencies are the gateway's own, shared with HTTP).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use edgeplug_gateway::metrics::MetricsSource;

#[derive(Debug, Default)]
pub struct GrpcMetrics {
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl GrpcMetrics {
    pub fn call(&self, method: &'static str, code: tonic::Code) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method, code_name(code)))
            .or_default() += 1;
    }

    /// Calls so far of `method` that ended with `code`.
    pub fn count(&self, method: &str, code: tonic::Code) -> u64 {
        let name = code_name(code);
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((m, c), _)| *m == method && *c == name)
            .map(|(_, n)| n)
            .sum()
    }
}

impl MetricsSource for GrpcMetrics {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP edgeplug_grpc_calls_total gRPC calls of the inference service, by method and status code."
        );
        let _ = writeln!(out, "# TYPE edgeplug_grpc_calls_total counter");
        for ((method, code), n) in self.calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "edgeplug_grpc_calls_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
