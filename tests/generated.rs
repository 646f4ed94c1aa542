//! Generated files are committed so they can be read without building; these tests fail
//! when a committed copy is stale. Regenerate with `UPDATE_GENERATED=1 cargo test --test integration generated::`.

use std::path::PathBuf;

use clap::CommandFactory;
use polars_cloud_auth::cli::Cli;

fn check(rel: &str, fresh: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&path, fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{rel} is stale: run `UPDATE_GENERATED=1 cargo test --test integration generated::` and commit it"
    );
}

#[test]
fn config_schema_is_current() {
    check(
        "docs/config.schema.json",
        &polars_cloud_auth::config::schema_json(),
    );
}

/// The CLI reference: every subcommand's long help, as clap renders it.
#[test]
fn cli_reference_is_current() {
    let mut cli = Cli::command().term_width(100);
    let mut out = String::from(
        "# Command-line reference\n\nGenerated from the clap definitions by `tests/generated.rs`; do not edit.\n\n",
    );
    out.push_str("## polars-cloud-auth\n\n```text\n");
    out.push_str(&cli.render_long_help().to_string());
    out.push_str("```\n");
    let names: Vec<String> = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub = cli.find_subcommand_mut(&name).unwrap();
        let mut sub = sub.clone().bin_name(format!("polars-cloud-auth {name}"));
        out.push_str(&format!("\n## polars-cloud-auth {name}\n\n```text\n"));
        out.push_str(&sub.render_long_help().to_string());
        out.push_str("```\n");
    }
    let out: String = out
        .lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect();
    check("docs/cli.md", &out);
}
