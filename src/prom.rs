//! Prometheus text exposition: one writer for every `/metrics` of the binary.

use std::fmt::Write as _;

/// Appends one metric family named `polars_cloud_auth_{name}`; each sample is its label
/// set (`""` or `{k="v"}`) and its value.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP polars_cloud_auth_{name} {help}");
    let _ = writeln!(out, "# TYPE polars_cloud_auth_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "polars_cloud_auth_{name}{labels} {value}");
    }
}

/// A label value, escaped as the text format asks.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn families_and_escaped_labels() {
        let mut out = String::new();
        super::family(
            &mut out,
            "x_total",
            "counter",
            "Xs.",
            &[("{a=\"1\"}", "2".into())],
        );
        assert_eq!(
            out,
            "# HELP polars_cloud_auth_x_total Xs.\n# TYPE polars_cloud_auth_x_total counter\npolars_cloud_auth_x_total{a=\"1\"} 2\n"
        );
        assert_eq!(super::label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
