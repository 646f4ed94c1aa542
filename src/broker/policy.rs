//! Who may receive which credential: the broker's policy file, which the chart renders
//! into a ConfigMap from its values (`broker.credentials`, `broker.grants`).
//!
//! Each service account gets at most one credential: the policy, not the pod, says which.
//! A rule naming service accounts wins over a rule for the whole namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The policy as written in the file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFile {
    /// Credential name to where its Secret is mounted (`client_id`, `client_secret`).
    pub credentials: BTreeMap<String, CredentialSpec>,
    /// Which service accounts receive which credential.
    #[serde(default)]
    pub grants: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSpec {
    /// Directory holding `client_id` and `client_secret` (a mounted Secret).
    pub dir: PathBuf,
}

/// One grant: the service accounts of a namespace (all of them when none are named).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub namespace: String,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    pub credential: String,
}

/// A checked policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Policy {
    credentials: BTreeMap<String, CredentialSpec>,
    /// (namespace, service account) to credential.
    accounts: BTreeMap<(String, String), String>,
    /// namespace to credential, for every service account not named above.
    namespaces: BTreeMap<String, String>,
}

/// The workload a token review vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
}

/// Why the policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("failed to read the broker policy '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not the policy's YAML.
    #[error("the broker policy '{}' is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// The policy contradicts itself.
    #[error("the broker policy '{}' is invalid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Why a workload gets no token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "service account {namespace}/{service_account} is granted no Polars Cloud credential by the broker's policy: add a grant for namespace '{namespace}' (serviceAccounts: ['{service_account}'] or all) to the chart value broker.grants"
)]
pub struct NotGranted {
    pub namespace: String,
    pub service_account: String,
}

impl Policy {
    /// Reads and checks the policy file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Problem::Syntax(message) => Error::Parse {
                path: path.to_path_buf(),
                message,
            },
            Problem::Meaning(message) => Error::Invalid {
                path: path.to_path_buf(),
                message,
            },
        })
    }

    fn parse(text: &str) -> Result<Self, Problem> {
        let file: PolicyFile =
            serde_saphyr::from_str(text).map_err(|e| Problem::Syntax(e.to_string()))?;
        Self::check(file).map_err(Problem::Meaning)
    }

    /// Checks names and references, and that no service account is given two credentials.
    pub fn check(file: PolicyFile) -> Result<Self, String> {
        for name in file.credentials.keys() {
            if !is_name(name) {
                return Err(format!(
                    "credential name '{name}' must be lowercase letters, digits and '-' (at most 63)"
                ));
            }
        }
        let mut policy = Policy {
            credentials: file.credentials,
            ..Policy::default()
        };
        for (i, rule) in file.grants.into_iter().enumerate() {
            let at = format!("grants[{i}]");
            if !policy.credentials.contains_key(&rule.credential) {
                let known: Vec<&str> = policy.credentials.keys().map(String::as_str).collect();
                return Err(format!(
                    "{at} names credential '{}', which is not among the credentials ({})",
                    rule.credential,
                    known.join(", ")
                ));
            }
            if !is_name(&rule.namespace) {
                return Err(format!(
                    "{at}: '{}' is not a namespace name",
                    rule.namespace
                ));
            }
            if rule.service_accounts.is_empty() {
                claim(
                    &mut policy.namespaces,
                    rule.namespace.clone(),
                    &rule.credential,
                    || format!("namespace '{}'", rule.namespace),
                )?;
            }
            for account in &rule.service_accounts {
                if !is_subdomain(account) {
                    return Err(format!("{at}: '{account}' is not a service account name"));
                }
                claim(
                    &mut policy.accounts,
                    (rule.namespace.clone(), account.clone()),
                    &rule.credential,
                    || format!("service account {}/{account}", rule.namespace),
                )?;
            }
        }
        Ok(policy)
    }

    /// The credential this workload receives.
    pub fn decide(&self, who: &Identity) -> Result<&str, NotGranted> {
        self.accounts
            .get(&(who.namespace.clone(), who.service_account.clone()))
            .or_else(|| self.namespaces.get(&who.namespace))
            .map(String::as_str)
            .ok_or_else(|| NotGranted {
                namespace: who.namespace.clone(),
                service_account: who.service_account.clone(),
            })
    }

    /// The credentials and where their Secrets are mounted.
    pub fn credentials(&self) -> &BTreeMap<String, CredentialSpec> {
        &self.credentials
    }
}

enum Problem {
    Syntax(String),
    Meaning(String),
}

/// Records `key → credential`, refusing a second, different credential for the same key.
fn claim<K: Ord>(
    map: &mut BTreeMap<K, String>,
    key: K,
    credential: &str,
    what: impl Fn() -> String,
) -> Result<(), String> {
    match map.get(&key) {
        Some(held) if held != credential => Err(format!(
            "{} is granted both '{held}' and '{credential}': give each service account one credential (another service account for the other)",
            what()
        )),
        Some(_) => Ok(()),
        None => {
            map.insert(key, credential.to_string());
            Ok(())
        }
    }
}

/// An RFC 1123 label: what namespaces and our credential names are.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: what service account names are.
fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ns: &str, sa: &str) -> Identity {
        Identity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: "p".into(),
        }
    }

    const TWO: &str = "credentials:\n  prod: {dir: /c/prod}\n  batch: {dir: /c/batch}\ngrants:\n  - namespace: team-a\n    credential: prod\n  - namespace: team-a\n    serviceAccounts: [etl]\n    credential: batch\n  - namespace: team-b\n    serviceAccounts: [reporter, loader]\n    credential: prod\n";

    #[test]
    fn named_accounts_win_over_the_namespace_rule() {
        let p = Policy::parse(TWO).ok().unwrap();
        assert_eq!(p.decide(&who("team-a", "default")), Ok("prod"));
        assert_eq!(p.decide(&who("team-a", "etl")), Ok("batch"));
        assert_eq!(p.decide(&who("team-b", "loader")), Ok("prod"));
        let refused = p.decide(&who("team-b", "default")).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("team-b/default"), "{text}");
        assert!(text.contains("broker.grants"), "{text}");
        assert!(p.decide(&who("team-c", "etl")).is_err());
    }

    fn meaning(text: &str) -> String {
        match Policy::parse(text) {
            Err(Problem::Meaning(m)) => m,
            Err(Problem::Syntax(m)) => panic!("syntax error instead: {m}"),
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    #[test]
    fn contradictions_and_dangling_names_are_refused_with_what_to_fix() {
        let m = meaning(
            "credentials:\n  a: {dir: /a}\n  b: {dir: /b}\ngrants:\n  - {namespace: x, credential: a}\n  - {namespace: x, credential: b}\n",
        );
        assert!(
            m.contains("namespace 'x' is granted both 'a' and 'b'"),
            "{m}"
        );
        let m = meaning(
            "credentials:\n  a: {dir: /a}\n  b: {dir: /b}\ngrants:\n  - {namespace: x, serviceAccounts: [s], credential: a}\n  - {namespace: x, serviceAccounts: [s], credential: b}\n",
        );
        assert!(m.contains("service account x/s"), "{m}");
        let m = meaning(
            "credentials:\n  a: {dir: /a}\ngrants:\n  - {namespace: x, credential: nope}\n",
        );
        assert!(
            m.contains("grants[0] names credential 'nope'") && m.contains("(a)"),
            "{m}"
        );
        let m = meaning("credentials:\n  A_B: {dir: /a}\n");
        assert!(m.contains("credential name 'A_B'"), "{m}");
        let m = meaning(
            "credentials:\n  a: {dir: /a}\ngrants:\n  - {namespace: Team, credential: a}\n",
        );
        assert!(m.contains("'Team' is not a namespace name"), "{m}");
        // The same grant twice is no contradiction.
        assert!(Policy::parse("credentials:\n  a: {dir: /a}\ngrants:\n  - {namespace: x, credential: a}\n  - {namespace: x, credential: a}\n").is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_files_name_the_file() {
        assert!(matches!(
            Policy::parse("credentials: {}\ngrant: []\n"),
            Err(Problem::Syntax(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let e = Policy::load(&path).unwrap_err().to_string();
        assert!(e.contains("policy.yaml"), "{e}");
        std::fs::write(&path, "credentials: [").unwrap();
        let e = Policy::load(&path).unwrap_err().to_string();
        assert!(e.contains("is invalid"), "{e}");
    }
}
