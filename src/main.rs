use std::process::ExitCode;

use clap::Parser;
use polars_cloud_auth::{cli::Cli, exit, load_config, run, telemetry};

fn main() -> ExitCode {
    polars_cloud_auth::hardening::no_core_dumps();
    polars_cloud_auth::serve::tls::provider();
    let cli = Cli::parse();
    let file = match load_config(&cli) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            return exit::to_exit_code(exit::USAGE);
        }
    };
    let log = config_log(&cli, &file);
    telemetry::init(&log);
    match run(cli, file) {
        Ok(code) => exit::to_exit_code(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::to_exit_code(exit::code_for(&e))
        }
    }
}

fn config_log(
    cli: &Cli,
    file: &polars_cloud_auth::config::ConfigFile,
) -> polars_cloud_auth::config::LogArgs {
    polars_cloud_auth::config::overlay(&cli.log, &file.log).unwrap_or_else(|_| cli.log.clone())
}
