//! `inject`: reads Kubernetes manifests (multi-document YAML) from files or stdin, adds the
//! token setup to each opted-in Pod and pod template, and prints the result; other
//! documents pass through unchanged. A report per object goes to stderr. When any object
//! is refused, nothing is printed, so a pipe into `kubectl apply -f -` applies nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::InjectCmdArgs;
use crate::inject::Settings;
use crate::inject::workload::{Action, Report, inject_document};

/// `polars-cloud-auth inject`: the settings from flags, environment and config file, then
/// [`run`] on the standard streams.
pub fn command(args: InjectCmdArgs) -> anyhow::Result<u8> {
    let settings = args.inject.settings()?;
    run(
        &args.files,
        &settings,
        args.all,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )?;
    Ok(crate::exit::OK)
}

/// Injects `files` (stdin when empty or `-`) and writes the YAML to `out`, reports to `log`.
pub fn run(
    files: &[PathBuf],
    settings: &Settings,
    all: bool,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    for file in files {
        let (name, text) = read(file, stdin)?;
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("{name} is not valid YAML: {e}"))?;
        for mut doc in parsed {
            match inject_document(&mut doc, settings, all) {
                Ok(r) => reports.extend(r.into_iter().map(|r| (name.clone(), r))),
                Err(e) => problems.push(format!("{name}: {e}")),
            }
            docs.push(doc);
        }
    }
    if !problems.is_empty() {
        bail!(
            "nothing was written: {} object(s) cannot be injected:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    for (name, report) in &reports {
        writeln!(log, "{name}: {}", describe(report))?;
        if let Action::Injected { warnings, .. } | Action::Unchanged { warnings, .. } =
            &report.action
        {
            for w in warnings {
                writeln!(log, "{name}: {}: warning: {w}", report.object)?;
            }
        }
    }
    if !docs.is_empty() {
        let text = serde_saphyr::to_string_multiple(&docs).context("failed to write YAML")?;
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn read(file: &Path, stdin: &mut dyn Read) -> anyhow::Result<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .context("failed to read stdin")?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("failed to read '{}'", file.display()))?;
    Ok((file.display().to_string(), text))
}

fn describe(report: &Report) -> String {
    let what = match &report.action {
        Action::Injected { mode, .. } => format!("injected ({})", mode.as_str()),
        Action::Unchanged { .. } => "already injected, unchanged".into(),
        Action::NotOptedIn => {
            "skipped: the pod template lacks the label polars.cloud/inject: \"true\" (or pass --all)"
                .into()
        }
        Action::OtherKind => "not a workload, passed through".into(),
    };
    format!("{} {what}", report.object)
}
