//! polars-cloud-auth: gets short-lived Polars Cloud access tokens to where workloads run.
//!
//! The library holds everything; `main` only parses, sets up logging and maps the result
//! to an exit code. Shared parts: [`source`] (grants, refresh, classification),
//! [`renew`] (timing), [`sink`] (where tokens go). One module per mode under [`modes`].

pub mod cli;
pub mod config;
pub mod credentials;
pub mod device;
pub mod exit;
pub mod modes;
pub mod renew;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod token;

use std::path::Path;
use std::sync::Arc;

use cli::{Cli, Command};
use config::{ConfigFile, overlay};
use sink::file::DEFAULT_POD_PATH;

/// The token file's default mode: owner and group (a pod's fsGroup) may read.
const POD_FILE_MODE: u32 = 0o640;

/// Loads the config file named by `--config` (or none).
pub fn load_config(cli: &Cli) -> Result<ConfigFile, config::Error> {
    match &cli.config {
        Some(path) => ConfigFile::load(path),
        None => Ok(ConfigFile::default()),
    }
}

/// Runs the parsed command to its end; the `u8` is the exit code.
pub fn run(cli: Cli, file: ConfigFile) -> anyhow::Result<u8> {
    match cli.command {
        Command::Schema => {
            print!("{}", config::schema_json());
            Ok(exit::OK)
        }
        Command::Probe(args) => {
            let fa = overlay(&args.file, &file.token_file)?;
            let tf = fa.token_file(Path::new(DEFAULT_POD_PATH), POD_FILE_MODE);
            match modes::probe::run(&tf, args.min_valid.0) {
                Ok(left) => {
                    println!("ok: token valid for {}s", left.as_secs());
                    Ok(exit::OK)
                }
                Err(e) => {
                    eprintln!("not ready: {:#}", anyhow::Error::from(e));
                    Ok(exit::FAILURE)
                }
            }
        }
        Command::Login(args) => modes::login::command(args, &file),
        Command::Status(args) => modes::status::command(args),
        Command::Logout(args) => modes::logout::command(args, &file),
        Command::Exec(args) => modes::exec::command(args, &file),
        Command::Token(args) => {
            let idp = overlay(&args.idp, &file.idp)?;
            let renew = overlay(&args.renew, &file.renewal)?;
            let source = idp.source()?;
            current_thread(async move {
                let cancel = shutdown::on_signals();
                modes::token::run(&source, renew.deadline(), &renew.policy(), &cancel).await
            })?;
            Ok(exit::OK)
        }
        Command::Init(args) => {
            let idp = overlay(&args.idp, &file.idp)?;
            let renew = overlay(&args.renew, &file.renewal)?;
            let fa = overlay(&args.file, &file.token_file)?;
            let source = idp.source()?;
            let tf = fa.token_file(Path::new(DEFAULT_POD_PATH), POD_FILE_MODE);
            current_thread(async move {
                let cancel = shutdown::on_signals();
                modes::init::run(&source, &tf, renew.deadline(), &renew.policy(), &cancel).await
            })?;
            Ok(exit::OK)
        }
        Command::Sidecar(args) => {
            let idp = overlay(&args.idp, &file.idp)?;
            let renew = overlay(&args.renew, &file.renewal)?;
            let fa = overlay(&args.file, &file.token_file)?;
            let serve = overlay(&args.serve, &file.sidecar)?;
            let source = Arc::new(idp.source()?);
            let settings = modes::sidecar::Settings {
                file: fa.token_file(Path::new(DEFAULT_POD_PATH), POD_FILE_MODE),
                policy: renew.policy(),
                listen: serve
                    .listen
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8471))),
                ready_margin: serve
                    .ready_margin
                    .map(|d| d.0)
                    .unwrap_or(std::time::Duration::from_secs(30)),
            };
            current_thread(async move {
                let cancel = shutdown::on_signals();
                modes::sidecar::run(source, settings, cancel).await
            })?;
            Ok(exit::OK)
        }
        Command::GithubAction { step } => current_thread(modes::github_action::run(step)),
    }
}

/// The token modes are I/O-bound and small: one thread keeps memory low.
fn current_thread<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
