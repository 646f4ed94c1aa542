//! Parsed values at the bottom of the layering: durations, fractions and file modes as
//! flags, the environment, the config file and annotations write them. Knows nothing of
//! modes or settings, so `config` and `inject` can both use it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serialize through `Display` and deserialize through `FromStr`, so the config file takes
/// the same text as the flag.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(HumanDuration);
serde_as_text!(FileMode);

/// A duration written the human way: `30s`, `5m`, `1h 30m`, `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 30s, 5m or 250ms"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 30s, 5m, 1h 30m or 250ms.",
            "pattern": r"^\s*\d+\s*[a-zµ]+(\s*\d+\s*[a-zµ]+)*\s*$"
        })
    }
}

/// A Unix file mode written in octal, like `0640`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(Self(mode)),
            _ => Err(format!("'{s}' is not an octal file mode such as 0640")),
        }
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileMode".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An octal file mode, quoted, such as \"0640\".",
            "pattern": "^(0o)?[0-7]{1,4}$"
        })
    }
}

/// A fraction of a token's life, between 0.1 and 0.95.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "f64", into = "f64")]
pub struct Fraction(#[schemars(range(min = 0.1, max = 0.95))] pub f64);

impl TryFrom<f64> for Fraction {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        if (0.1..=0.95).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("{v} is not a fraction between 0.1 and 0.95"))
        }
    }
}

impl From<Fraction> for f64 {
    fn from(f: Fraction) -> f64 {
        f.0
    }
}

impl FromStr for Fraction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        Self::try_from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_with_useful_errors() {
        assert_eq!("0640".parse::<FileMode>().unwrap(), FileMode(0o640));
        assert!("0999".parse::<FileMode>().unwrap_err().contains("octal"));
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert!("soon".parse::<HumanDuration>().unwrap_err().contains("30s"));
        assert!("1.5".parse::<Fraction>().is_err());
    }
}
