//! The `edgeplug` command.

/// mimalloc instead of glibc's malloc. With glibc, the gateway had to choose: per-thread arenas
/// let RSS creep in the soak (`tests/soak/soak.py`: 175 → 187 MiB over 24 minutes, as requests
/// moved between ever-changing tokio and blocking-pool threads), and one arena
/// (`M_ARENA_MAX=1`, flat at 130 MiB) serialized every allocation of the serving threads on
/// its lock: `POST /predict` at 4 connections on 2 cores served 15–20 % more with
/// `MALLOC_ARENA_MAX=4`. mimalloc's thread-local heaps take no lock on the request path and,
/// tuned as in [`allocator`], hold no more than one glibc arena did.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    edgeplug::cli::main()
}

/// mimalloc gives memory back to the OS as soon as it is done with it. Its defaults keep freed
/// pages for a second (`purge_delay` 1000 ms, and purged only when the allocator next runs, so
/// an idle gateway kept its peak) and commit arenas up front (`arena_eager_commit` on Linux,
/// whose purges then leave the pages resident): the digits gateway sat at 89 MiB idle and 130
/// MiB after load, against 51 and 53 MiB with one glibc arena. Immediate purging without eager
/// commit measured 47 MiB idle and 51–55 MiB after load at the same request rate. An operator's
/// `MIMALLOC_PURGE_DELAY` or `MIMALLOC_ARENA_EAGER_COMMIT` wins.
///
/// The options must be set before mimalloc reserves its first arena, which the first
/// allocation does, before `main`: so they are set from the executable's `.preinit_array`,
/// which the dynamic loader runs before any constructor and any Rust code, with glibc (the
/// gateway's Linux builds); elsewhere mimalloc's defaults stand.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    use std::ffi::{CStr, c_char, c_int};

    // Indices into mimalloc's `mi_option_e` (include/mimalloc.h of the mimalloc that
    // libmimalloc-sys =0.1.49 bundles; the same in its v2 and v3 sources). The crate does not
    // export them as constants "for stability reasons", hence the pinned version.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const OPTIONS: [(libmimalloc_sys::mi_option_t, &[u8]); 2] = [
        (PURGE_DELAY, b"MIMALLOC_PURGE_DELAY="),
        (ARENA_EAGER_COMMIT, b"MIMALLOC_ARENA_EAGER_COMMIT="),
    ];

    #[used]
    #[unsafe(link_section = ".preinit_array")]
    static TUNE: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = tune;

    /// Sets the options the environment does not set. glibc calls `.preinit_array` functions
    /// with `main`'s arguments and environment; this one reads the environment in place and
    /// allocates nothing (an allocation would initialize mimalloc before its options are set).
    extern "C" fn tune(_argc: c_int, _argv: *const *const c_char, envp: *const *const c_char) {
        for (option, prefix) in OPTIONS {
            if !in_environment(envp, prefix) {
                // SAFETY: mi_option_set only stores the option's value.
                unsafe { libmimalloc_sys::mi_option_set(option, 0) };
            }
        }
    }

    /// Whether some `NAME=value` entry of the NULL-terminated `envp` starts with `prefix`.
    fn in_environment(envp: *const *const c_char, prefix: &[u8]) -> bool {
        if envp.is_null() {
            return false;
        }
        for i in 0.. {
            // SAFETY: `envp` is the NULL-terminated array of C strings the loader passed.
            let entry = unsafe { *envp.add(i) };
            if entry.is_null() {
                return false;
            }
            // SAFETY: each entry is a NUL-terminated string that lives for the process.
            if unsafe { CStr::from_ptr(entry) }
                .to_bytes()
                .starts_with(prefix)
            {
                return true;
            }
        }
        false
    }
}
