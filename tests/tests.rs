//! The one integration test binary (ripgrep's layout): each file beside this one is a
//! module of it, with the shared harness in `common` and the Kubernetes schema checks in
//! `kube`. Run one part with `cargo test --test integration engine::`; the tests that need
//! a slow real peer are `#[ignore]`d with the peer named, and `scripts/test.sh --slow` runs
//! them with `--ignored` once the peer is started. Where each behaviour is proven:
//! tests/README.md.

mod common;
mod kube;

mod doctor;
mod engine;
mod generated;
mod github_action;
mod hardening;
mod inject;
mod keycloak;
mod login;
mod private_key_jwt;
mod webhook;
