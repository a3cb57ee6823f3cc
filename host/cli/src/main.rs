//! The `edgeplug` command.

fn main() -> std::process::ExitCode {
    edgeplug_host::cli::main()
}
