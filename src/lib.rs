//! polars-cloud-auth: gets short-lived Polars Cloud access tokens to where workloads run.
//!
//! The library holds everything; `main` only parses, sets up logging and maps the result
//! to an exit code. Shared parts: [`source`] (grants, refresh, classification, and what
//! it signs in with), [`renew`] (timing), [`sink`] (where tokens go), [`serve`] (the one
//! server, TLS, metrics text). One module per mode under [`modes`].
//! At the bottom, knowing nothing of modes: [`values`] (parsed values) and [`vars`]
//! (the variable names); [`config`] resolves the flags into settings above them.

pub mod broker;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod exit;
pub mod hardening;
pub mod inject;
pub mod modes;
pub mod relay;
pub mod renew;
pub mod renewal;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod token;
pub mod values;
pub mod vars;
pub mod webhook;

use cli::{Cli, Command};
use config::ConfigFile;

/// The command line with the config file named by `--config` (or none) laid under it:
/// the whole configuration, resolved once ([`Cli::with_file`]).
pub fn resolve(cli: Cli) -> Result<Cli, config::Error> {
    let file = match &cli.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    cli.with_file(&file)
}

/// Runs the resolved command to its end; the `u8` is the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Schema => {
            print!("{}", config::schema_json());
            Ok(exit::OK)
        }
        Command::Probe(args) => modes::probe::command(args),
        Command::Login(args) => modes::login::command(args),
        Command::Status(args) => modes::status::command(args),
        Command::Logout(args) => modes::logout::command(args),
        Command::Exec(args) => modes::exec::command(args),
        Command::ExecChild(args) => modes::exec::child(args),
        Command::Token(args) => modes::token::command(args),
        Command::Init(args) => modes::init::command(args),
        Command::Sidecar(args) => modes::sidecar::command(args),
        Command::GithubAction { step } => modes::current_thread(modes::github_action::run(step)),
        Command::Inject(args) => modes::inject::command(args),
        Command::Webhook(args) => modes::webhook::command(args),
        Command::Broker(args) => modes::broker::command(args),
        Command::Doctor(args) => modes::doctor::command(args),
    }
}
