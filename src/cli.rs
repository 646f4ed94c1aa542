//! The command line: one subcommand per mode, shared argument groups flattened in.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FileArgs, HumanDuration, IdpArgs, LogArgs, RenewArgs, ServeArgs};

/// Gets short-lived Polars Cloud access tokens to where workloads run, so the long-lived
/// service-account secret stays in one place.
#[derive(Parser, Debug)]
#[command(name = "polars-cloud-auth", version, propagate_version = true)]
pub struct Cli {
    /// YAML file with the same settings as the flags (flags and environment win).
    #[arg(
        long,
        global = true,
        env = "POLARS_CLOUD_AUTH_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch one token and print it to stdout (nothing else goes to stdout).
    Token(TokenArgs),
    /// Fetch one token, write it to the token file and exit (for an init container).
    Init(InitArgs),
    /// Write the token, then keep the file fresh until SIGTERM or SIGINT.
    Sidecar(SidecarArgs),
    /// Exit 0 when the token file holds a token valid for at least --min-valid.
    Probe(ProbeArgs),
    /// Print the JSON Schema of the --config file.
    Schema,
    /// The GitHub Action's main or post step; reads the action's INPUT_* variables.
    GithubAction {
        #[arg(value_enum)]
        step: crate::modes::github_action::Step,
    },
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
}

#[derive(Args, Debug)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// The token must stay valid at least this long.
    #[arg(
        long,
        env = "POLARS_CLOUD_MIN_VALID",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub min_valid: HumanDuration,
}
