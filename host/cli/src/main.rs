//! The `edgeplug` command.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    edgeplug::cli::main()
}

/// One glibc malloc arena for the whole process, unless the operator chose with
/// `MALLOC_ARENA_MAX`. glibc gives each thread that contends an arena of its own (up to 8 per
/// core), and requests that run on ever-changing tokio and blocking-pool threads leave every
/// arena fragmented: in the soak (`tests/soak/soak.py`, three plugins under load) RSS crept
/// 175 → 187 MiB over 24 minutes with the default arenas, and stayed flat at 130 MiB from
/// minute 3 with one, at the same request rate. The price is contention on that arena's lock:
/// `POST /predict` at 4 connections on 2 cores served 7,350 req/s with one arena and 8,600–8,900
/// with `MALLOC_ARENA_MAX=4`, which also started the soak 40 MiB higher (171 against 134 MiB).
/// Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; called first thing in main, before any
        // other thread exists, as glibc requires for arena settings.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
