//! The YAML configuration file (`--config`) and its JSON Schema.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Error;
use super::args::*;

/// The YAML configuration file (`--config`): the same settings as the flags, by section.
/// The client secret is deliberately not a setting: it comes from the environment or a
/// file only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(title = "polars-cloud-auth configuration")]
pub struct ConfigFile {
    #[serde(default)]
    pub idp: IdpArgs,
    #[serde(default)]
    pub token_file: FileArgs,
    #[serde(default)]
    pub renewal: RenewArgs,
    #[serde(default)]
    pub sidecar: ServeArgs,
    #[serde(default)]
    pub relay: RelayArgs,
    #[serde(default)]
    pub log: LogArgs,
    #[serde(default)]
    pub inject: InjectArgs,
    #[serde(default)]
    pub webhook: WebhookArgs,
    #[serde(default)]
    pub broker: BrokerArgs,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// The JSON Schema of the configuration file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
