//! Kubernetes checks shared by the injection tests: no API server runs on these machines,
//! so objects are checked against Kubernetes' own schemas by kubernetes-validate (strict,
//! for 1.29 and the newest version it bundles) and the contract checks of tests/py/k8s.py,
//! in one Python process for many files.
#![allow(dead_code)]

use std::path::Path;

use crate::common::{python, repo, scrubbed};

/// Runs tests/py/validate_injected.py over `paths` (files or directories) and fails the
/// test with its list of problems.
pub fn validate(paths: &[&Path]) {
    let out = scrubbed(python())
        .arg(repo().join("tests/py/validate_injected.py"))
        .args(paths)
        .current_dir(repo())
        .output()
        .expect("failed to run tests/py/validate_injected.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate and the contract checks found problems:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    eprintln!("{}", stdout.trim());
}
