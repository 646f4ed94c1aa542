//! Kubernetes resource quantities (`5m`, `16Mi`, `0.5`, `1e3`, `500n`), checked the way the
//! API server parses them (resource.Quantity: a number, then one of the suffixes `n`, `u`,
//! `m`, none, `k`, `M`, `G`, `T`, `P`, `E`, `Ki` to `Ei`, or a decimal exponent `e`/`E`), so a bad value is refused by us with a useful message instead of by
//! the API server after injection.

/// The value of a quantity, for comparisons (a request above its limit).
///
/// Returns why `s` is not a quantity. Negative quantities are refused: no resource of an
/// injected container can be negative.
pub fn parse(s: &str) -> Result<f64, String> {
    let bad = || format!("'{s}' is not a Kubernetes quantity; write e.g. 5m, 0.1, 16Mi or 1Gi");
    let s_trim = s.strip_prefix('+').unwrap_or(s);
    if s_trim.starts_with('-') {
        return Err(format!(
            "'{s}' is negative; a resource quantity must be 0 or more"
        ));
    }
    let digits_end = s_trim
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s_trim.len());
    let (number, suffix) = s_trim.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let e = e.strip_prefix('+').unwrap_or(e);
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => (-1, d),
                None => (1, e),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: i32 = digits.parse().map_err(|_| bad())?;
            10f64.powi(sign * n)
        }
        _ => return Err(bad()),
    };
    Ok(value * factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_what_the_api_server_accepts() {
        assert_eq!(parse("5m").unwrap(), 0.005);
        assert_eq!(parse("0.5").unwrap(), 0.5);
        assert_eq!(parse(".5").unwrap(), 0.5);
        assert_eq!(parse("1.").unwrap(), 1.0);
        assert_eq!(parse("16Mi").unwrap(), 16.0 * 1024.0 * 1024.0);
        assert_eq!(parse("16777216").unwrap(), 16_777_216.0);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse("1E-3").unwrap(), 0.001);
        assert_eq!(parse("+2k").unwrap(), 2000.0);
        assert_eq!(parse("0").unwrap(), 0.0);
    }

    /// Regression (issue 18, item 11): `500n` and `1u` were refused.
    #[test]
    fn every_suffix_of_the_grammar_is_accepted_and_nothing_else() {
        let close = |a: f64, b: f64| (a - b).abs() <= b.abs() * 1e-12;
        let accepted = [
            ("500n", 500e-9),
            ("1u", 1e-6),
            ("250m", 0.25),
            ("2", 2.0),
            ("1k", 1e3),
            ("1M", 1e6),
            ("1G", 1e9),
            ("1T", 1e12),
            ("1P", 1e15),
            ("1E", 1e18),
            ("1Ki", 1024.0),
            ("1Mi", 1024f64.powi(2)),
            ("1Gi", 1024f64.powi(3)),
            ("1Ti", 1024f64.powi(4)),
            ("1Pi", 1024f64.powi(5)),
            ("1Ei", 1024f64.powi(6)),
            ("1e3", 1e3),
            ("1E3", 1e3),
            ("1e+3", 1e3),
            ("5e-3", 5e-3),
            ("1.5e2", 150.0),
        ];
        for (q, want) in accepted {
            let got = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert!(close(got, want), "{q}: {got} != {want}");
        }
        let refused = [
            "1N", "1U", "1mi", "1K", "1ki", "1KiB", "1 k", "1e", "1e1.5", "1n5", "u", "1mm",
        ];
        for q in refused {
            assert!(parse(q).is_err(), "{q} was accepted");
        }
    }

    #[test]
    fn refuses_the_rest_with_an_example() {
        for bad in [
            "", "lots", "16MB", "1.2.3", "Mi", ".", "1e", "1e+", "5 m", "1ki",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("16Mi"), "{bad}: {e}");
        }
        assert!(parse("-1").unwrap_err().contains("negative"));
    }
}
