use std::process::ExitCode;

use clap::Parser;
use polars_cloud_auth::{cli::Cli, exit, resolve, run, telemetry};

fn main() -> ExitCode {
    polars_cloud_auth::hardening::no_core_dumps();
    polars_cloud_auth::serve::tls::provider();
    let cli = match resolve(Cli::parse()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            return exit::to_exit_code(exit::USAGE);
        }
    };
    telemetry::init(&cli.log);
    match run(cli) {
        Ok(code) => exit::to_exit_code(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::to_exit_code(exit::code_for(&e))
        }
    }
}
