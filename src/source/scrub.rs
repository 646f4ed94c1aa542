//! Keeping secrets out of what the provider echoes back: every form a secret was sent in
//! is removed before any of its text reaches an error or a log.

/// Removes every form a secret was sent in from text the provider echoed back, then
/// shortens it. Replacing before shortening keeps a secret cut in half from showing.
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    let mut forms: Vec<String> = secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .flat_map(|s| encodings(s))
        .collect();
    // Longest first, so a form that contains another is removed whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    for form in &forms {
        out = replace_ignoring_hex_case(&out, form);
    }
    out.chars().take(300).collect()
}

/// The forms a secret travels in: as is, form-encoded (`+` for a space, `%2B` for `+`),
/// percent-encoded (`%20` for a space), and both escapes of the JSON string.
pub(super) fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent = form.replace('+', "%20");
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    vec![secret.to_string(), form, percent, json]
}

/// `text` with `form` replaced, where the hex digits of its `%XX` escapes may be of either
/// case (`%2b` is `%2B`).
pub(super) fn replace_ignoring_hex_case(text: &str, form: &str) -> String {
    if !form.contains('%') {
        return text.replace(form, "[redacted]");
    }
    let lower = text.to_ascii_lowercase();
    let needle = form.to_ascii_lowercase();
    // Case-folding ASCII keeps byte offsets, so matches in `lower` index `text`.
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(&needle) {
        if at < last {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str("[redacted]");
        last = at + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The `Authorization: Basic` credential for `id` and `secret` as we send it (RFC 6749
/// section 2.3.1: both form-encoded, then base64), so it can be scrubbed when echoed.
pub(super) fn basic_credential(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
}
