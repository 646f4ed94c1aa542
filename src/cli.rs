//! The command line: one subcommand per mode, shared argument groups flattened in.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use url::Url;

use crate::sink::client_config;
use crate::sink::stored::Stores;
use crate::values::HumanDuration;
use crate::vars;

use crate::config::{
    self, BrokerArgs, ConfigFile, FileArgs, IdpArgs, InjectArgs, LogArgs, RelayArgs, RenewArgs,
    ServeArgs, WebhookArgs, overlay,
};

/// Gets short-lived Polars Cloud access tokens to where workloads run, so the long-lived
/// service-account secret stays in one place.
#[derive(Parser, Debug)]
#[command(name = "polars-cloud-auth", version, propagate_version = true)]
pub struct Cli {
    /// YAML file with the same settings as the flags (flags and environment win).
    #[arg(
        long,
        global = true,
        env = vars::AUTH_CONFIG,
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The whole configuration resolved once: every argument group of the command with
    /// the config file's section under it (flags and environment win; a flag left unset
    /// never erases the file's value). The modes then read their groups only.
    pub fn with_file(mut self, file: &ConfigFile) -> Result<Self, config::Error> {
        self.log = overlay(&self.log, &file.log)?;
        self.command = match self.command {
            Command::Token(mut a) => {
                a.idp = overlay(&a.idp, &file.idp)?;
                a.renew = overlay(&a.renew, &file.renewal)?;
                Command::Token(a)
            }
            Command::Init(mut a) => {
                a.idp = overlay(&a.idp, &file.idp)?;
                a.file = overlay(&a.file, &file.token_file)?;
                a.renew = overlay(&a.renew, &file.renewal)?;
                a.relay = overlay(&a.relay, &file.relay)?;
                Command::Init(a)
            }
            Command::Sidecar(mut a) => {
                a.idp = overlay(&a.idp, &file.idp)?;
                a.file = overlay(&a.file, &file.token_file)?;
                a.renew = overlay(&a.renew, &file.renewal)?;
                a.serve = overlay(&a.serve, &file.sidecar)?;
                a.relay = overlay(&a.relay, &file.relay)?;
                Command::Sidecar(a)
            }
            Command::Probe(mut a) => {
                a.file = overlay(&a.file, &file.token_file)?;
                Command::Probe(a)
            }
            Command::Login(mut a) => {
                a.idp = overlay(&IdpArgs::from(a.realm.clone()), &file.idp)?;
                Command::Login(a)
            }
            Command::Logout(mut a) => {
                a.idp = overlay(&IdpArgs::from(a.realm.clone()), &file.idp)?;
                Command::Logout(a)
            }
            Command::Exec(mut a) => {
                a.idp = overlay(&a.idp, &file.idp)?;
                a.renew = overlay(&a.renew, &file.renewal)?;
                a.token_file = a.token_file.or_else(|| file.token_file.path.clone());
                Command::Exec(a)
            }
            Command::Inject(mut a) => {
                a.inject = overlay(&a.inject, &file.inject)?;
                Command::Inject(a)
            }
            Command::Webhook(mut a) => {
                a.serve = overlay(&a.serve, &file.webhook)?;
                a.inject = overlay(&a.inject, &file.inject)?;
                Command::Webhook(a)
            }
            Command::Broker(mut a) => {
                a.serve = overlay(&a.serve, &file.broker)?;
                a.idp = overlay(&a.idp, &file.idp)?;
                a.renew = overlay(&a.renew, &file.renewal)?;
                Command::Broker(a)
            }
            Command::Doctor(mut a) => {
                a.idp = overlay(&a.idp, &file.idp)?;
                a.file = overlay(&a.file, &file.token_file)?;
                a.relay = overlay(&a.relay, &file.relay)?;
                a.serve = overlay(&a.serve, &file.sidecar)?;
                Command::Doctor(a)
            }
            other @ (Command::Status(_)
            | Command::ExecChild(_)
            | Command::Schema
            | Command::GithubAction { .. }) => other,
        };
        Ok(self)
    }
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
    /// Sign in as a person (device flow) and store the tokens where the clients look.
    Login(LoginArgs),
    /// Show where tokens are stored, whose they are and how long they stay valid.
    Status(StatusArgs),
    /// Revoke the stored session and remove what login stored.
    Logout(LogoutArgs),
    /// Run a command whose Polars Cloud client renews its token through us (the relay).
    ///
    /// The token comes from a stored token file valid for at least --min-valid (a
    /// sidecar's, read again as it is renewed), or is fetched, and then renewed, with the
    /// configured credentials. The command gets a private config directory
    /// (POLARS_CLOUD_CONFIG_DIR) with a config.toml and the legacy token files, whose
    /// refresh token only this run's relay accepts, and HTTPS_PROXY, SSL_CERT_FILE,
    /// POLARS_CLOUD_DOMAIN and POLARS_CLOUD_API_ADDR that send its token refreshes to the
    /// relay (everything else passes the proxy unchanged). POLARS_CLOUD_ACCESS_TOKEN and
    /// the client secret are removed from its environment. When the token is login's
    /// (config.toml), the command's client renews with that session instead, and
    /// --env-token only puts one token into POLARS_CLOUD_ACCESS_TOKEN. Signals are passed
    /// on, the command's exit status becomes ours, and the command dies with us (Linux).
    Exec(ExecArgs),
    /// Internal: how `exec` starts its command on Linux. Asks for the kernel to kill this
    /// process when `exec` dies, then becomes the command.
    #[command(hide = true)]
    ExecChild(ExecChildArgs),
    /// Print the JSON Schema of the --config file.
    Schema,
    /// The GitHub Action's main or post step; reads the action's INPUT_* variables.
    GithubAction {
        #[arg(value_enum)]
        step: Step,
    },
    /// Add the token setup to the pods and pod templates of Kubernetes manifests (YAML
    /// from files or stdin) and print them, like `linkerd inject`.
    Inject(InjectCmdArgs),
    /// Serve the mutating admission webhook that adds the token setup to pods.
    Webhook(WebhookCmdArgs),
    /// Serve tokens to broker-backed sidecars, which authenticate with their pod's
    /// service-account token; the only place that holds the credentials.
    Broker(BrokerCmdArgs),
    /// Walk the path from the credentials to the app's client, link by link, and say what
    /// holds and what to fix.
    ///
    /// In a pod, run it in our container, which sees the volumes the app containers mount:
    /// `kubectl exec POD -c polars-cloud-auth -- polars-cloud-auth doctor --app-uid UID`.
    /// Exit 0 when no link is broken (warnings allowed), 1 when one is, 2 for bad flags.
    /// Nothing it prints is a secret or a token (docs/doctor.md).
    Doctor(DoctorArgs),
}

/// Which entry point of the action is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Get a token and hand it to the job's later steps.
    Main,
    /// After the job: delete the token file and revoke the refresh token.
    Post,
    /// Started by main with `long-running: true`: keeps a token fresh for the later steps'
    /// clients (the relay) until post stops it. Reads the inputs from stdin, not the
    /// environment, so the secret is in no process environment that later steps can read.
    Relay,
}

#[derive(Args, Debug)]
// `token` and `init` fetch once: the renewal group's flags that only a renewing mode uses
// are accepted (the config file's `renewal:` section is shared) but not listed.
#[command(mut_arg("renew_at", |a| a.hide(true)))]
#[command(mut_arg("min_renew_interval", |a| a.hide(true)))]
#[command(mut_arg("rejected_retry", |a| a.hide(true)))]
pub struct TokenArgs {
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
}

#[derive(Args, Debug)]
#[command(mut_arg("renew_at", |a| a.hide(true)))]
#[command(mut_arg("min_renew_interval", |a| a.hide(true)))]
#[command(mut_arg("rejected_retry", |a| a.hide(true)))]
pub struct InitArgs {
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
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
    #[command(flatten)]
    pub relay: RelayArgs,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// The token must stay valid at least this long [default: 30s, but at most a tenth of
    /// the token's life, so that short tokens pass].
    #[arg(long, env = vars::MIN_VALID, value_name = "DURATION")]
    pub min_valid: Option<HumanDuration>,
    /// Wait up to this long for a valid token instead of failing at once. In a pod's
    /// postStart hook this holds the next container until the token is written, without
    /// a probe period.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<HumanDuration>,
    /// While waiting, read the sidecar's /readyz here (plain http on loopback) so that a
    /// failed wait says why: the credentials rejected, or no token yet.
    #[arg(long, value_name = "URL", requires = "wait")]
    pub ready_url: Option<Url>,
}

/// The realm a person signs in to: the identity provider settings of `IdpArgs` without the
/// service-account credentials, which `login` and `logout` do not use.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Identity provider")]
pub struct RealmArgs {
    /// Realm issuer URL [default: https://auth.{domain}/realms/Polars].
    #[arg(long, env = vars::ISSUER, value_name = "URL")]
    pub issuer: Option<Url>,
    /// Polars Cloud domain, used when no issuer is given [default: prd.cloud.pola.rs].
    #[arg(long, env = vars::DOMAIN)]
    pub domain: Option<String>,
    /// `audience` parameter of the device authorization request [default: account].
    #[arg(long, env = vars::AUDIENCE)]
    pub audience: Option<String>,
    /// `scope` parameter of the device authorization request.
    #[arg(long, env = vars::SCOPE)]
    pub scope: Option<String>,
    /// Extra trusted CA certificates (PEM), on top of the system roots.
    #[arg(long, env = vars::CA_FILE, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Limit for one HTTP request [default: 10s].
    #[arg(long, env = vars::HTTP_TIMEOUT, value_name = "DURATION")]
    pub http_timeout: Option<HumanDuration>,
}

impl From<RealmArgs> for IdpArgs {
    fn from(r: RealmArgs) -> Self {
        Self {
            issuer: r.issuer,
            domain: r.domain,
            audience: r.audience,
            scope: r.scope,
            ca_file: r.ca_file,
            http_timeout: r.http_timeout,
            ..Self::default()
        }
    }
}

/// Where `login` stores tokens, and `status` and `logout` look.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Where tokens are stored")]
pub struct StoreArgs {
    /// A bare token file for `exec` and tools that read one (no polars-cloud release reads it)
    /// [default: ~/.polars/cloud_access_token].
    #[arg(
        long,
        alias = "token-file",
        env = vars::ACCESS_TOKEN_PATH,
        value_name = "PATH"
    )]
    pub path: Option<PathBuf>,
    /// The directory of the current client's config.toml [default: $XDG_CONFIG_HOME/polars_cloud
    /// or ~/.config/polars_cloud].
    #[arg(long, env = vars::CONFIG_DIR, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The stores these flags name, defaults from the environment.
    pub fn stores(&self) -> Result<Stores, client_config::Error> {
        Stores::from_env(self.path.as_deref(), self.config_dir.as_deref())
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Print the access token to stdout and store nothing.
    #[arg(long)]
    pub print: bool,
    /// Do not try to open a browser; only show the URL, the code and the QR code.
    #[arg(long)]
    pub no_browser: bool,
    #[command(flatten)]
    pub realm: RealmArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The realm's flags over the config file's `idp:` ([`Cli::with_file`]).
    #[arg(skip)]
    pub idp: IdpArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub realm: RealmArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The realm's flags over the config file's `idp:` ([`Cli::with_file`]).
    #[arg(skip)]
    pub idp: IdpArgs,
}

/// `exec-child PARENT -- COMMAND...`.
#[derive(Args, Debug)]
pub struct ExecChildArgs {
    /// The pid of the `exec` that started us; if our parent is another one by the time
    /// the parent-death signal is set, that `exec` is already gone.
    pub parent: u32,
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Only put one token into POLARS_CLOUD_ACCESS_TOKEN, as before the relay: the client
    /// cannot renew it, so the command must end within the token's life. By default the
    /// command's client renews its token through polars-cloud-auth (the relay).
    #[arg(long, env = vars::EXEC_ENV_TOKEN)]
    pub env_token: bool,
    /// A stored token is used only when it stays valid at least this long; otherwise a new
    /// one is fetched with the configured credentials.
    #[arg(
        long,
        env = vars::MIN_VALID,
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub min_valid: HumanDuration,
    /// The command to run, and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
    /// Token file to take the token from [default: /var/run/polars-cloud/token, then
    /// login's ~/.polars/cloud_access_token and config.toml].
    #[arg(
        long,
        env = vars::ACCESS_TOKEN_PATH,
        value_name = "PATH",
        help_heading = "Stored tokens"
    )]
    pub token_file: Option<PathBuf>,
    /// The directory of the current client's config.toml, looked at after the token files.
    #[arg(
        long,
        env = vars::CONFIG_DIR,
        value_name = "DIR",
        help_heading = "Stored tokens"
    )]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
}

#[derive(Args, Debug)]
pub struct InjectCmdArgs {
    /// Manifest files (multi-document YAML); `-` or none reads stdin.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Inject every Pod and workload, not only those whose pod template carries the label
    /// polars.cloud/inject: "true".
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub inject: InjectArgs,
}

#[derive(Args, Debug)]
pub struct WebhookCmdArgs {
    #[command(flatten)]
    pub serve: WebhookArgs,
    #[command(flatten)]
    pub inject: InjectArgs,
}

#[derive(Args, Debug)]
pub struct BrokerCmdArgs {
    #[command(flatten)]
    pub serve: BrokerArgs,
    /// The identity provider, shared by every credential of the policy (the client id
    /// and secret come from each credential's Secret).
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub renew: RenewArgs,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the report as JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The uid the app's containers run as (its securityContext.runAsUser), to check that
    /// it may read the token file, the CA bundle and its config directory [default: only
    /// what every uid of the pod may read is known].
    #[arg(long, value_name = "UID")]
    pub app_uid: Option<u32>,
    /// The app's groups (runAsGroup, supplementalGroups); a pod's fsGroup is seen on the
    /// volume itself. Repeat or comma-separate.
    #[arg(long, value_name = "GID", value_delimiter = ',', requires = "app_uid")]
    pub app_gid: Vec<u32>,
    /// The Python the app runs, to read which polars-cloud it has [default on a
    /// workstation: python3 on PATH; in a pod: what the relay saw on /metrics].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// The app's polars-cloud version, when doctor cannot see it (e.g. 0.11.3).
    #[arg(long, value_name = "VERSION", value_parser = client_version)]
    pub client_version: Option<crate::relay::clients::Version>,
    /// Do not sign in to test the credentials (a sign-in starts a session at the identity
    /// provider, which doctor revokes at once).
    #[arg(long)]
    pub no_grant: bool,
    #[command(flatten)]
    pub idp: IdpArgs,
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Where our sidecar serves /metrics (the client versions its relay saw).
    #[command(flatten)]
    pub serve: ServeArgs,
}

fn client_version(s: &str) -> Result<crate::relay::clients::Version, String> {
    crate::relay::clients::Version::parse(s)
        .ok_or_else(|| format!("'{s}' is not a version such as 0.11.3"))
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    fn help(mode: &str) -> String {
        Cli::command()
            .find_subcommand_mut(mode)
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default()
    }

    /// Issue 20, item 4: the configuration is resolved once, for every command: each of
    /// its argument groups gets the file's section under it, and a flag wins.
    #[test]
    fn with_file_lays_the_files_sections_under_every_commands_groups() {
        use super::Command;
        use crate::config::ConfigFile;
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "idp:\n  domain: file.example\n  scope: from-file\ntoken-file:\n  path: /file/token\nrenewal:\n  renew-at: 0.6\nsidecar:\n  ready-margin: 7s\nrelay:\n  domain: relay.file\nlog:\n  log-level: debug\ninject:\n  cpu-request: 7m\nwebhook:\n  max-connections: 77\nbroker:\n  token-audience: file-aud\n",
        )
        .unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let json = |v: &dyn erased::Json| v.json();
        let same = |what: &str, got: serde_json::Value, want: serde_json::Value| {
            assert_eq!(
                got, want,
                "{what}: the file's section must be laid under the flags"
            );
        };
        let parse = |args: &[&str]| {
            let mut argv = vec!["polars-cloud-auth"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap().with_file(&file).unwrap()
        };
        let cli = parse(&["sidecar"]);
        same("log", json(&cli.log), json(&file.log));
        let Command::Sidecar(a) = cli.command else {
            panic!()
        };
        same("sidecar idp", json(&a.idp), json(&file.idp));
        same("sidecar token-file", json(&a.file), json(&file.token_file));
        same("sidecar renewal", json(&a.renew), json(&file.renewal));
        same("sidecar serve", json(&a.serve), json(&file.sidecar));
        same("sidecar relay", json(&a.relay), json(&file.relay));
        let Command::Init(a) = parse(&["init"]).command else {
            panic!()
        };
        same("init relay", json(&a.relay), json(&file.relay));
        same("init token-file", json(&a.file), json(&file.token_file));
        let Command::Token(a) = parse(&["token"]).command else {
            panic!()
        };
        same("token renewal", json(&a.renew), json(&file.renewal));
        let Command::Probe(a) = parse(&["probe"]).command else {
            panic!()
        };
        same("probe token-file", json(&a.file), json(&file.token_file));
        let Command::Exec(a) = parse(&["exec", "--", "true"]).command else {
            panic!()
        };
        same("exec idp", json(&a.idp), json(&file.idp));
        assert_eq!(
            a.token_file.as_deref(),
            Some(std::path::Path::new("/file/token"))
        );
        let Command::Login(a) = parse(&["login", "--scope", "flag"]).command else {
            panic!()
        };
        assert_eq!(a.idp.domain.as_deref(), Some("file.example"));
        assert_eq!(a.idp.scope.as_deref(), Some("flag"), "a flag wins");
        let Command::Logout(a) = parse(&["logout"]).command else {
            panic!()
        };
        assert_eq!(a.idp.domain.as_deref(), Some("file.example"));
        let Command::Inject(a) = parse(&["inject"]).command else {
            panic!()
        };
        same("inject", json(&a.inject), json(&file.inject));
        let Command::Webhook(a) = parse(&["webhook"]).command else {
            panic!()
        };
        same("webhook", json(&a.serve), json(&file.webhook));
        same("webhook inject", json(&a.inject), json(&file.inject));
        let Command::Broker(a) = parse(&["broker"]).command else {
            panic!()
        };
        same("broker", json(&a.serve), json(&file.broker));
        same("broker renewal", json(&a.renew), json(&file.renewal));
        let Command::Doctor(a) = parse(&["doctor"]).command else {
            panic!()
        };
        same("doctor serve", json(&a.serve), json(&file.sidecar));
        same("doctor relay", json(&a.relay), json(&file.relay));
    }

    mod erased {
        pub trait Json {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }

    #[test]
    fn one_shot_modes_do_not_list_the_renewing_modes_flags() {
        for mode in ["token", "init"] {
            let text = help(mode);
            assert!(text.contains("--timeout"), "{mode}");
            for flag in ["--renew-at", "--min-renew-interval", "--rejected-retry"] {
                assert!(!text.contains(flag), "{mode} lists {flag}");
            }
        }
        for mode in ["sidecar", "exec"] {
            assert!(help(mode).contains("--renew-at"), "{mode}");
        }
    }
}
