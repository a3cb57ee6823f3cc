//! The `edgeplug` command.

fn main() -> std::process::ExitCode {
    edgeplug::cli::main()
}
