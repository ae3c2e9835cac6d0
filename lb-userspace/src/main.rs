//! `lb`: parse the command line and dispatch.

fn main() -> std::process::ExitCode {
    lb_userspace::cli::main()
}
