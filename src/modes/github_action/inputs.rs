//! The action's inputs: the `INPUT_*` variables the runner sets, parsed and checked.

use super::*;

/// Reads an environment variable; `std::env::var` outside tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The action's inputs, parsed.
#[derive(Debug)]
pub struct Inputs {
    pub idp: IdpArgs,
    pub credentials: Credentials,
    pub export_env: bool,
    pub token_file: bool,
    pub retries: u32,
    /// The `domain` input, exported so that the client talks to the same deployment.
    pub domain: Option<String>,
    /// Keep the token fresh for later steps (the relay) instead of exporting one token.
    pub long_running: bool,
    /// `client-assertion: github-oidc`: the job's OIDC token authenticates the client,
    /// for this audience (`None`: the realm's issuer URL, which Keycloak expects).
    pub github_oidc: Option<Option<String>>,
}

/// The variable the runner sets for an input: upper-cased, spaces to `_`, dashes kept.
pub(super) fn input_variable(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

/// An input, trimmed; an empty input is an absent one (the runner sets every declared
/// input, empty when not given).
pub(super) fn input(lookup: Lookup, name: &str) -> Option<String> {
    lookup(&input_variable(name))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub(super) fn bad(name: &'static str, value: &str, expected: impl Into<String>) -> Error {
    Error::BadInput {
        name,
        value: value.to_string(),
        expected: expected.into(),
    }
}

pub(super) fn choice<T: ValueEnum>(lookup: Lookup, name: &'static str) -> Result<Option<T>, Error> {
    let Some(value) = input(lookup, name) else {
        return Ok(None);
    };
    T::from_str(&value, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        bad(name, &value, format!("use {}", names.join(" or ")))
    })
}

/// YAML 1.2 core booleans, as the Actions toolkit accepts them.
pub(super) fn boolean(lookup: Lookup, name: &'static str, default: bool) -> Result<bool, Error> {
    match input(lookup, name).as_deref() {
        None => Ok(default),
        Some("true" | "True" | "TRUE") => Ok(true),
        Some("false" | "False" | "FALSE") => Ok(false),
        Some(other) => Err(bad(name, other, "use true or false")),
    }
}

pub(super) fn url(lookup: Lookup, name: &'static str) -> Result<Option<Url>, Error> {
    input(lookup, name)
        .map(|v| Url::parse(&v).map_err(|e| bad(name, &v, format!("not a URL ({e})"))))
        .transpose()
}

/// A credential from its input, else its environment variable, else an error at use that
/// says what to set.
pub(super) fn credential(
    input: Option<String>,
    from: &'static str,
    env: (&'static str, Option<String>),
    missing: &'static str,
) -> Value {
    let present = |v: &String| !v.trim().is_empty();
    match (input.filter(present), env.1.filter(present)) {
        (Some(value), _) => Value::Inline { value, from },
        (None, Some(value)) => Value::Inline { value, from: env.0 },
        (None, None) => Value::Missing { what: missing },
    }
}

impl Inputs {
    pub fn parse(lookup: Lookup) -> Result<Self, Error> {
        let domain = input(lookup, "domain");
        let idp = IdpArgs {
            issuer: url(lookup, "issuer")?,
            // The client reads POLARS_CLOUD_DOMAIN too: a workflow that sets it gets its
            // token from the same deployment the client will talk to.
            domain: domain.clone().or_else(|| {
                lookup(vars::DOMAIN)
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
            }),
            token_url: url(lookup, "token-url")?,
            grant: choice::<GrantKind>(lookup, "grant")?,
            client_auth: choice::<ClientAuthKind>(lookup, "client-auth")?,
            scope: input(lookup, "scope"),
            audience: input(lookup, "audience"),
            ca_file: input(lookup, "ca-file").map(PathBuf::from),
            ..IdpArgs::default()
        };
        // The secret is taken verbatim: the credentials module trims trailing newlines only
        // and refuses line breaks inside.
        let credentials = Credentials {
            client_id: credential(
                input(lookup, "client-id"),
                "the `client-id` input",
                (vars::CLIENT_ID, lookup(vars::CLIENT_ID)),
                "client id: set the `client-id` input (or POLARS_CLOUD_CLIENT_ID)",
            ),
            client_secret: credential(
                lookup(&input_variable("client-secret")),
                "the `client-secret` input",
                (vars::CLIENT_SECRET, lookup(vars::CLIENT_SECRET)),
                "client secret: the `client-secret` input is empty and POLARS_CLOUD_CLIENT_SECRET is not set (a `secrets.*` expression is empty when the secret does not exist, or for a pull request from a fork)",
            ),
        };
        let retries = match input(lookup, "retries") {
            None => DEFAULT_RETRIES,
            Some(v) => v.parse().map_err(|_| {
                bad(
                    "retries",
                    &v,
                    "use a whole number such as 3 (0 disables retries)",
                )
            })?,
        };
        let github_oidc = match input(lookup, "client-assertion").as_deref() {
            None => None,
            Some("github-oidc") => Some(input(lookup, "oidc-audience")),
            Some(other) => {
                return Err(bad(
                    "client-assertion",
                    other,
                    "use github-oidc (the job's OIDC token; needs `permissions: id-token: write`)",
                ));
            }
        };
        if github_oidc.is_none()
            && let Some(a) = input(lookup, "oidc-audience")
        {
            return Err(bad(
                "oidc-audience",
                &a,
                "it is the audience of the job's OIDC token: set `client-assertion: github-oidc` too",
            ));
        }
        Ok(Self {
            github_oidc,
            idp,
            credentials,
            export_env: boolean(lookup, "export-env", true)?,
            token_file: boolean(lookup, "token-file", false)?,
            retries,
            domain,
            long_running: boolean(lookup, "long-running", false)?,
        })
    }
}

/// Where the token file goes: a fresh name directly under RUNNER_TEMP, which the runner
/// empties after the job, and never inside the workspace.
pub fn token_file_path(
    temp: Option<&Path>,
    workspace: Option<&Path>,
    tag: u64,
) -> Result<PathBuf, Error> {
    let temp = temp.ok_or(Error::NoRunnerTemp)?;
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if let Some(workspace) = workspace.filter(|w| real(temp).starts_with(real(w))) {
        return Err(Error::TempInWorkspace {
            temp: temp.to_path_buf(),
            workspace: workspace.to_path_buf(),
        });
    }
    Ok(temp.join(format!("polars-cloud-token-{tag:016x}")))
}
