//! GitHub Actions' runner protocol: workflow commands on stdout (`::add-mask::`,
//! `::error::`, `::warning::`) and file commands (the files named by `GITHUB_ENV`,
//! `GITHUB_OUTPUT`, `GITHUB_STATE` and `GITHUB_STEP_SUMMARY`).
//!
//! Every `name=value` entry is written in the heredoc form with a random delimiter that is
//! checked not to occur in the value, so a value can never smuggle in a second entry.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file the runner reads after the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileCommand {
    /// Environment variables for the later steps of the job.
    Env,
    /// The step's outputs.
    Output,
    /// Values for this action's post step, which sees them as `STATE_<name>`.
    State,
}

impl FileCommand {
    /// The environment variable that names the file.
    pub fn variable(self) -> &'static str {
        match self {
            Self::Env => "GITHUB_ENV",
            Self::Output => "GITHUB_OUTPUT",
            Self::State => "GITHUB_STATE",
        }
    }
}

/// The file commands of the current step, as the runner announced them.
#[derive(Clone, Debug, Default)]
pub struct Runner {
    env: Option<PathBuf>,
    output: Option<PathBuf>,
    state: Option<PathBuf>,
    summary: Option<PathBuf>,
}

impl Runner {
    /// Reads the file paths from the environment (`lookup` is `std::env::var` outside tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let path = |var: &str| lookup(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        Self {
            env: path(FileCommand::Env.variable()),
            output: path(FileCommand::Output.variable()),
            state: path(FileCommand::State.variable()),
            summary: path("GITHUB_STEP_SUMMARY"),
        }
    }

    fn path(&self, command: FileCommand) -> Option<&Path> {
        match command {
            FileCommand::Env => self.env.as_deref(),
            FileCommand::Output => self.output.as_deref(),
            FileCommand::State => self.state.as_deref(),
        }
    }

    /// Appends `name` = `value` to the command's file.
    pub fn set(&self, command: FileCommand, name: &str, value: &str) -> Result<(), Error> {
        let variable = command.variable();
        let path = self.path(command).ok_or(Error::NotSet { variable })?;
        append(path, variable, heredoc(name, value)?.as_bytes())
    }

    /// Appends a Markdown line to the job summary; `false` when the runner offers none.
    pub fn summary(&self, line: &str) -> Result<bool, Error> {
        let Some(path) = &self.summary else {
            return Ok(false);
        };
        append(path, "GITHUB_STEP_SUMMARY", format!("{line}\n").as_bytes())?;
        Ok(true)
    }
}

fn append(path: &Path, variable: &'static str, bytes: &[u8]) -> Result<(), Error> {
    // One write of the whole entry: the runner reads the file only after the step.
    let result = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()));
    result.map_err(|source| Error::Write {
        variable,
        path: path.to_path_buf(),
        source,
    })
}

/// One entry in the heredoc form, `name<<DELIM\nvalue\nDELIM\n`, with a fresh random
/// delimiter.
pub fn heredoc(name: &str, value: &str) -> Result<String, Error> {
    // A 128-bit delimiter colliding with a value is unheard of, but the check is what makes
    // the format safe, so a collision just draws again.
    let mut last = None;
    for _ in 0..3 {
        let delimiter = format!("ghadelimiter_{:032x}", rand::random::<u128>());
        match heredoc_with(name, value, &delimiter) {
            Err(e @ Error::DelimiterInValue { .. }) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or(Error::DelimiterInValue {
        name: name.to_string(),
    }))
}

/// [`heredoc`] with a given delimiter.
pub fn heredoc_with(name: &str, value: &str, delimiter: &str) -> Result<String, Error> {
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(Error::BadName {
            name: name.to_string(),
        });
    }
    if value.contains(delimiter) {
        return Err(Error::DelimiterInValue {
            name: name.to_string(),
        });
    }
    Ok(format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"))
}

/// Escapes a workflow command's message the way the runner unescapes it.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Tells the runner to mask `secret` in every later line of the job's log.
pub fn add_mask(out: &mut impl Write, secret: &str) -> io::Result<()> {
    command(out, "add-mask", secret)
}

/// An error annotation on the step.
pub fn error(out: &mut impl Write, message: &str) -> io::Result<()> {
    command(out, "error", message)
}

/// A warning annotation on the step.
pub fn warning(out: &mut impl Write, message: &str) -> io::Result<()> {
    command(out, "warning", message)
}

fn command(out: &mut impl Write, name: &str, data: &str) -> io::Result<()> {
    writeln!(out, "::{name}::{}", escape_data(data))?;
    out.flush()
}

/// Why a file command could not be written. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runner did not name the file: not running as a step of a job.
    #[error("{variable} is not set: run `github-action` as a step of a GitHub Actions job")]
    NotSet { variable: &'static str },
    /// The file could not be appended to.
    #[error("failed to append to {variable} file '{}'", path.display())]
    Write {
        variable: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Names are ours; anything else is a bug.
    #[error("'{name}' is not a usable file-command name (letters, digits, '_' and '-' only)")]
    BadName { name: String },
    /// The value holds the delimiter, which would end the entry early.
    #[error("the value of '{name}' contains the heredoc delimiter")]
    DelimiterInValue { name: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(dir: &Path) -> Runner {
        Runner::from_lookup(|var| match var {
            "GITHUB_ENV" | "GITHUB_OUTPUT" | "GITHUB_STATE" | "GITHUB_STEP_SUMMARY" => {
                Some(dir.join(var).to_string_lossy().into_owned())
            }
            _ => None,
        })
    }

    #[test]
    fn entries_use_the_heredoc_form_with_a_random_delimiter() {
        let entry = heredoc("POLARS_CLOUD_ACCESS_TOKEN", "a.b.c").unwrap();
        let lines: Vec<&str> = entry.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 3, "{entry:?}");
        let delimiter = lines[0]
            .strip_prefix("POLARS_CLOUD_ACCESS_TOKEN<<")
            .unwrap()
            .trim_end_matches('\n');
        assert!(delimiter.starts_with("ghadelimiter_") && delimiter.len() == 45);
        assert_eq!(lines[1], "a.b.c\n");
        assert_eq!(lines[2], format!("{delimiter}\n"));
        assert_ne!(
            entry,
            heredoc("POLARS_CLOUD_ACCESS_TOKEN", "a.b.c").unwrap()
        );
    }

    #[test]
    fn a_value_holding_the_delimiter_is_refused() {
        let err = heredoc_with("x", "a\nEOF\nINJECTED=1", "EOF").unwrap_err();
        assert!(matches!(err, Error::DelimiterInValue { .. }), "{err}");
        assert!(!err.to_string().contains("INJECTED"));
        // Multi-line values are fine when the delimiter is not among them.
        assert_eq!(heredoc_with("x", "a\nb", "D").unwrap(), "x<<D\na\nb\nD\n");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "A=B", "A<<B", "a b", "a\nb"] {
            assert!(matches!(
                heredoc_with(bad, "v", "D"),
                Err(Error::BadName { .. })
            ));
        }
        assert!(heredoc_with("access-token", "v", "D").is_ok());
    }

    #[test]
    fn entries_are_appended_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        r.set(FileCommand::Output, "a", "1").unwrap();
        r.set(FileCommand::Output, "b", "2").unwrap();
        let text = std::fs::read_to_string(dir.path().join("GITHUB_OUTPUT")).unwrap();
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("a<<") && text.contains("\nb<<"), "{text}");
        assert!(r.summary("one line").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("GITHUB_STEP_SUMMARY")).unwrap(),
            "one line\n"
        );

        let none = Runner::from_lookup(|_| None);
        let err = none.set(FileCommand::State, "a", "1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "GITHUB_STATE is not set: run `github-action` as a step of a GitHub Actions job"
        );
        assert!(!none.summary("x").unwrap());
    }

    #[test]
    fn workflow_commands_escape_their_data() {
        let mut out = Vec::new();
        error(&mut out, "50% failed\r\nsecond line").unwrap();
        add_mask(&mut out, "tok%en").unwrap();
        warning(&mut out, "w").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "::error::50%25 failed%0D%0Asecond line\n::add-mask::tok%25en\n::warning::w\n"
        );
    }
}
