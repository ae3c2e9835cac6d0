//! `lb`: parse the command line and dispatch.

fn main() -> anyhow::Result<()> {
    lb_userspace::cli::main()
}
