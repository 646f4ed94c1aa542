//! `login`: a person signs in with the device flow; the tokens go where the Polars Cloud
//! clients look (config.toml for 0.12, the legacy token files for 0.6 to 0.11; a bare
//! token file for `exec` and tools),
//! or to stdout with `--print`. Everything on the terminal goes to stderr.

use std::ffi::OsString;
use std::io::Write;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::cli::LoginArgs;
use crate::sink::stored::Stores;
use crate::source::Endpoints;
use crate::source::device::{self, Authorization, Outcome};
use crate::token::{AccessToken, Tokens};

/// What to do with the tokens.
pub enum Target {
    /// `--print`: the access token on stdout, nothing stored.
    Print,
    Store(Stores),
}

pub struct Settings {
    pub http: reqwest::Client,
    pub endpoints: Endpoints,
    pub request: device::Request,
    pub open_browser: bool,
    pub target: Target,
}

/// `polars-cloud-auth login`.
pub fn command(args: LoginArgs) -> anyhow::Result<u8> {
    let idp = args.idp;
    let target = if args.print {
        Target::Print
    } else {
        Target::Store(args.store.stores()?)
    };
    let defaults = device::Request::default();
    let settings = Settings {
        http: crate::source::http_client(&idp.http())?,
        endpoints: idp.endpoints()?,
        request: device::Request {
            audience: idp.audience.clone().or(defaults.audience),
            scope: idp.scope.clone().filter(|s| !s.is_empty()),
            ..defaults
        },
        open_browser: should_open_browser(args.no_browser, &|k| std::env::var_os(k)),
        target,
    };
    super::current_thread(async move {
        let cancel = crate::shutdown::on_signals();
        run(&settings, &cancel).await
    })?;
    Ok(crate::exit::OK)
}

pub async fn run(s: &Settings, cancel: &CancellationToken) -> anyhow::Result<()> {
    let auth = tokio::select! {
        r = device::authorize(&s.http, &s.endpoints, &s.request) => r?,
        _ = cancel.cancelled() => return Err(device::Error::Interrupted.into()),
    };
    let received_at = Instant::now();
    eprint!("{}", prompt(&auth));
    if s.open_browser {
        open_browser(auth.browser_url().to_string());
    }
    let tokens = device::wait_for_tokens(
        &s.http,
        &s.endpoints,
        &s.request,
        &auth,
        received_at,
        cancel,
        |outcome, wait| {
            if outcome == Outcome::SlowDown {
                eprintln!(
                    "The identity provider asked to poll less often: checking every {}s now.",
                    wait.as_secs()
                );
            }
        },
    )
    .await?;
    match &s.target {
        Target::Print => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", tokens.access.secret().expose_secret())?;
            out.flush()?;
            eprintln!("{}", signed_in(&tokens.access, SystemTime::now()));
        }
        Target::Store(stores) => {
            store(stores, &tokens)?;
            eprint!("{}", stored(&tokens, stores, SystemTime::now()));
        }
    }
    Ok(())
}

/// Writes both files; the config.toml first, as the current client reads it.
fn store(stores: &Stores, tokens: &Tokens) -> anyhow::Result<()> {
    if tokens.refresh.is_none() {
        tracing::warn!(
            "the identity provider issued no refresh token: polars-cloud 0.12 ignores an [auth] without one"
        );
    }
    stores
        .config
        .store(
            tokens.access.secret(),
            tokens.refresh.as_ref().map(|r| &r.value),
        )
        .context("signed in, but the tokens could not be stored")?;
    stores
        .token_file
        .write(&tokens.access, SystemTime::now())
        .context("signed in, but the token file could not be written")?;
    Ok(())
}

/// What the person reads first: the URL, the code, the QR code.
pub fn prompt(auth: &Authorization) -> String {
    let minutes = auth.expires_in.as_secs().div_ceil(60);
    let mut text = String::new();
    text.push_str("\nTo sign in to Polars Cloud, open this URL in a browser:\n\n");
    text.push_str(&format!("    {}\n\n", auth.browser_url()));
    text.push_str(&format!(
        "and check that it shows this code:  {}\n",
        auth.user_code
    ));
    if auth.verification_uri_complete.is_none() {
        text.push_str("(enter the code there when asked)\n");
    }
    text.push_str("\nOr scan this QR code with your phone:\n\n");
    text.push_str(&qr(auth.browser_url()));
    text.push_str(&format!(
        "\nWaiting for approval (the code expires in {minutes} minute{}; press Ctrl-C to cancel)...\n",
        if minutes == 1 { "" } else { "s" }
    ));
    text
}

/// The URL as a QR code of Unicode half blocks, two modules per character cell, light on
/// dark so that it scans on a dark terminal.
pub fn qr(url: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(url.as_bytes()) {
        Ok(code) => {
            let mut art = code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            art.push('\n');
            art
        }
        // Only a URL of several kilobytes does not fit; the URL above is still there.
        Err(_) => String::new(),
    }
}

/// Whether to try a browser: not with `--no-browser`, and on Linux and the BSDs only with a
/// display or a `BROWSER` (over SSH without either, xdg-open would fail or start a text
/// browser on top of our prompt).
pub fn should_open_browser(no_browser: bool, env: &dyn Fn(&str) -> Option<OsString>) -> bool {
    if no_browser {
        return false;
    }
    if cfg!(any(target_os = "macos", windows)) {
        return true;
    }
    ["BROWSER", "DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.is_empty()))
}

/// Opens the URL in the background; a failure only costs a note, the URL is on screen.
fn open_browser(url: String) {
    let opening = tokio::task::spawn_blocking(move || webbrowser::open(&url));
    tokio::spawn(async move {
        if let Ok(Err(e)) = opening.await {
            tracing::debug!(error = %e, "no browser opened");
            eprintln!("(Could not open a browser: open the URL above yourself.)");
        }
    });
}

fn who(token: &AccessToken) -> Option<String> {
    let claims = crate::token::claims(token.secret().expose_secret()).ok()?;
    claims
        .preferred_username
        .or(claims.email)
        .or(claims.sub)
        .filter(|s| !s.is_empty())
}

fn signed_in(access: &AccessToken, now: SystemTime) -> String {
    let left = access.remaining(now);
    let left = humantime::format_duration(std::time::Duration::from_secs(left.as_secs()));
    match who(access) {
        Some(name) => format!("Signed in as {name}. The access token is valid for {left}."),
        None => format!("Signed in. The access token is valid for {left}."),
    }
}

/// The closing lines after storing.
fn stored(tokens: &Tokens, stores: &Stores, now: SystemTime) -> String {
    let [access, refresh] = stores.config.legacy_paths();
    format!(
        "\n{}\nStored in:\n  {}  (polars-cloud 0.12 and later, which refresh it)\n  {} and {}  (polars-cloud 0.6 to 0.11, which refresh them)\n  {}  (for exec and tools; no polars-cloud release reads it)\nRun `polars-cloud-auth status` to check, `polars-cloud-auth logout` to sign out.\n",
        signed_in(&tokens.access, now),
        stores.config.path().display(),
        access.display(),
        refresh.display(),
        stores.token_file.path().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::time::Duration;

    fn auth(complete: bool) -> Authorization {
        Authorization {
            device_code: SecretString::from("device-code-secret"),
            user_code: "WDJB-MJHT".into(),
            verification_uri: "https://auth.example/realms/Polars/device".into(),
            verification_uri_complete: complete
                .then(|| "https://auth.example/realms/Polars/device?user_code=WDJB-MJHT".into()),
            expires_in: Duration::from_secs(600),
            interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_prompt_shows_url_code_and_qr_but_not_the_device_code() {
        let text = prompt(&auth(true));
        assert!(
            text.contains("    https://auth.example/realms/Polars/device?user_code=WDJB-MJHT\n")
        );
        assert!(text.contains("this code:  WDJB-MJHT"), "{text}");
        assert!(text.contains("expires in 10 minutes"), "{text}");
        assert!(text.contains('▀') || text.contains('▄'), "{text}");
        assert!(!text.contains("device-code-secret"));
        let text = prompt(&auth(false));
        assert!(text.contains("enter the code there"), "{text}");
    }

    #[test]
    fn the_qr_code_is_square_half_blocks_with_a_quiet_zone() {
        let art = qr("https://auth.example/realms/Polars/device?user_code=WDJB-MJHT");
        let lines: Vec<&str> = art.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // Two modules per line: the height in modules equals the width.
        assert!(
            (lines.len() * 2).abs_diff(width) <= 1,
            "{}x{}",
            width,
            lines.len()
        );
        assert!(art.chars().all(|c| " ▀▄█\n".contains(c)), "{art}");
        // Light quiet zone (drawn as full blocks on a dark terminal) around it.
        assert!(lines[0].chars().all(|c| c == '█'), "{}", lines[0]);
    }

    #[test]
    fn a_browser_is_tried_only_where_one_can_open() {
        let none = |_: &str| None;
        let display = |k: &str| (k == "DISPLAY").then(|| OsString::from(":0"));
        let browser = |k: &str| (k == "BROWSER").then(|| OsString::from("firefox"));
        assert!(!should_open_browser(true, &display));
        assert!(should_open_browser(false, &display));
        assert!(should_open_browser(false, &browser));
        assert_eq!(
            should_open_browser(false, &none),
            cfg!(any(target_os = "macos", windows))
        );
    }
}
