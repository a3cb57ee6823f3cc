//! One integration-test binary (one link, many modules).

mod digits;
mod runtime;
