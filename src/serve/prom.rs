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

/// Appends one histogram family named `polars_cloud_auth_{name}`: each bucket is its
/// upper bound and the count of observations at most that (cumulative), then `+Inf`, the
/// sum and the count.
pub fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &[(f64, u64)],
    count: u64,
    sum: f64,
) {
    let name = format!("polars_cloud_auth_{name}");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
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
