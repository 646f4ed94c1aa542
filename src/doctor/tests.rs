use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn the_table_shows_each_link_its_fix_and_a_verdict_and_json_says_ok() {
    let report = Report {
        place: Place::OurContainer,
        findings: vec![
            Finding::ok(link::CREDENTIALS, "client id x"),
            Finding::fail(link::GRANT, "rejected", "rotate the secret"),
            Finding::skip(link::CLIENT, "unknown"),
        ],
    };
    assert!(report.broken());
    assert_eq!(
        report.table(),
        "polars-cloud-auth doctor: in our container, looking at the shared volumes on the app's behalf\n\
         \n\
         LINK         STATUS  DETAIL\n\
         credentials  ok      client id x\n\
         grant        FAIL    rejected\n\
         \x20                    fix: rotate the secret\n\
         client       skip    unknown\n\
         \n\
         1 link(s) broken, 0 warning(s): fix the first FAIL first\n"
    );
    let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["place"], "our-container");
    assert_eq!(json["findings"][1]["status"], "fail");
    assert_eq!(json["findings"][1]["fix"], "rotate the secret");
    assert!(json["findings"][0].get("fix").is_none());
    let fine = Report {
        place: Place::Laptop,
        findings: vec![Finding::warn(link::CLOCK, "6 s", "ntp")],
    };
    assert!(!fine.broken());
    assert!(fine.table().ends_with("every link holds; 1 warning(s)\n"));
}

#[test]
fn clock_skew_is_measured_against_the_date_header() {
    let local = at(1_700_000_000);
    let date = |secs: u64| httpdate::fmt_http_date(at(secs));
    let c = |d: Option<&str>| clock(d, local, "the identity provider");
    assert_eq!(c(Some(&date(1_700_000_000))).status, Status::Ok);
    assert_eq!(c(Some(&date(1_699_999_997))).status, Status::Ok);
    let warn = c(Some(&date(1_700_000_010)));
    assert_eq!(warn.status, Status::Warn);
    assert_eq!(
        warn.detail,
        "this clock is 10 s behind the identity provider's"
    );
    let fail = c(Some(&date(1_699_996_400)));
    assert_eq!(fail.status, Status::Fail);
    assert_eq!(
        fail.detail,
        "this clock is 3600 s ahead of the identity provider's"
    );
    assert_eq!(c(None).status, Status::Skip);
    assert_eq!(c(Some("yesterday")).status, Status::Skip);
}

#[test]
fn the_token_file_must_be_there_and_valid_beyond_the_margin() {
    let now = at(1_000);
    let p = Path::new("/t");
    let life = Duration::from_secs(300);
    let token = |exp| TokenFacts::Token {
        expires_at: at(exp),
        life,
    };
    let f = |facts| token_file(p, facts, now, None, "our container");
    assert_eq!(f(token(1_200)).status, Status::Ok);
    // 30 s (a tenth of 300 s) is the margin.
    assert_eq!(f(token(1_020)).status, Status::Warn);
    let expired = f(token(990));
    assert_eq!(expired.status, Status::Fail);
    assert!(
        expired.detail.contains("expired 10 s ago"),
        "{}",
        expired.detail
    );
    assert_eq!(f(TokenFacts::Missing).status, Status::Fail);
    assert_eq!(f(TokenFacts::NotAToken).status, Status::Fail);
    assert_eq!(
        f(TokenFacts::Unreadable("permission denied".into())).status,
        Status::Fail
    );
    // A margin given (--ready-margin) wins.
    assert_eq!(
        token_file(p, token(1_100), now, Some(Duration::from_secs(120)), "x").status,
        Status::Warn
    );
}

#[test]
fn who_may_read_follows_the_kernels_rules_and_the_pods_fs_group() {
    let p = Path::new("/v/token");
    let dir = |uid, gid, mode| Meta { uid, gid, mode };
    let uid = |u: u32, gids: Vec<u32>| App { uid: Some(u), gids };
    let check = |app: &App, f: Meta, d: Meta| usable(app, &[(p, f, d, Access::Read)]).status;
    let open_dir = dir(65532, 65532, 0o40755);
    // No fsGroup, 0640: owner only (and root).
    let f640 = dir(65532, 65532, 0o100640);
    assert_eq!(check(&uid(65532, vec![]), f640, open_dir), Status::Ok);
    assert_eq!(check(&uid(1000, vec![]), f640, open_dir), Status::Fail);
    assert_eq!(check(&uid(0, vec![]), f640, open_dir), Status::Ok);
    assert_eq!(check(&uid(1000, vec![65532]), f640, open_dir), Status::Ok);
    // 0644: anyone.
    let f644 = dir(65532, 65532, 0o100644);
    assert_eq!(check(&uid(1000, vec![]), f644, open_dir), Status::Ok);
    assert_eq!(check(&App::default(), f644, open_dir), Status::Ok);
    // fsGroup 2000: the volume's directory is set-group-id and group 2000; every
    // container of the pod has that group.
    let fs_dir = dir(0, 2000, 0o42770);
    let f_fs = dir(65532, 2000, 0o100640);
    assert_eq!(check(&uid(1000, vec![]), f_fs, fs_dir), Status::Ok);
    let every = usable(&App::default(), &[(p, f_fs, fs_dir, Access::Read)]);
    assert_eq!(every.status, Status::Ok);
    assert!(every.detail.contains("fsGroup 2000"), "{}", every.detail);
    // A directory others cannot search hides a readable file.
    assert_eq!(
        check(&uid(1000, vec![]), f644, dir(65532, 65532, 0o40700)),
        Status::Fail
    );
    // Unknown uid, owner-only file: cannot tell.
    assert_eq!(check(&App::default(), f640, open_dir), Status::Warn);
}

#[test]
fn the_files_the_app_writes_back_need_write_access_for_it() {
    let p = Path::new("/var/run/polars-cloud-client/app/cloud_access_token");
    let m = |uid, gid, mode| Meta { uid, gid, mode };
    let app = App {
        uid: Some(1000),
        gids: vec![],
    };
    let use_ = |app: &App, f: Meta, d: Meta, a: Access| usable(app, &[(p, f, d, a)]);
    // No fsGroup: our container (65532) wrote them; the app is "other".
    let dir = m(0, 0, 0o40777);
    // The old legacy files' mode: readable, but 0.11's write-back is refused.
    let read_only = use_(&app, m(65532, 65532, 0o100644), dir, Access::WriteInPlace);
    assert_eq!(read_only.status, Status::Fail);
    assert!(
        read_only.detail.contains("cannot write back"),
        "{}",
        read_only.detail
    );
    assert_eq!(
        use_(&app, m(65532, 65532, 0o100644), dir, Access::Read).status,
        Status::Ok
    );
    assert_eq!(
        use_(&app, m(65532, 65532, 0o100666), dir, Access::WriteInPlace).status,
        Status::Ok
    );
    // config.toml is replaced through a temporary file: the directory must be writable.
    let closed = m(0, 0, 0o40755);
    assert_eq!(
        use_(&app, m(65532, 65532, 0o100644), closed, Access::Replace).status,
        Status::Fail
    );
    assert_eq!(
        use_(&app, m(65532, 65532, 0o100644), dir, Access::Replace).status,
        Status::Ok
    );
    // fsGroup 2000, unknown uid: the group's bits decide.
    let fs_dir = m(0, 2000, 0o42770);
    let any = App::default();
    assert_eq!(
        use_(&any, m(65532, 2000, 0o100660), fs_dir, Access::WriteInPlace).status,
        Status::Ok
    );
    assert_eq!(
        use_(&any, m(65532, 2000, 0o100640), fs_dir, Access::WriteInPlace).status,
        Status::Warn
    );
}

#[test]
fn each_family_is_served_by_the_relay_modes_and_none_by_the_bare_file() {
    let told = |v: &str| Seen::Told {
        version: Version::parse(v).unwrap(),
        from: "--client-version".into(),
    };
    for v in ["0.7.0", "0.10.0", "0.11.3", "0.12.0"] {
        assert_eq!(client(told(v), Delivery::Relay).status, Status::Ok, "{v}");
        assert_eq!(client(told(v), Delivery::Laptop).status, Status::Ok, "{v}");
        assert_eq!(
            client(told(v), Delivery::TokenFileOnly).status,
            Status::Fail,
            "{v}"
        );
    }
    let old = client(told("0.6.3"), Delivery::Relay);
    assert_eq!(old.status, Status::Fail);
    assert!(old.fix.unwrap().contains("0.7 or later"));
    let newer = client(told("0.13.0"), Delivery::Relay);
    assert_eq!(newer.status, Status::Ok);
    assert!(
        newer.detail.contains("treated as config-toml"),
        "{}",
        newer.detail
    );
    assert!(
        client(told("0.11.0"), Delivery::Relay)
            .detail
            .contains("legacy-files")
    );
    // The relay's view: the worst version seen decides; nothing seen is no verdict.
    let seen = |vs: &[&str], untrusting| Seen::Relay {
        versions: vs.iter().map(|v| Version::parse(v).unwrap()).collect(),
        untrusting,
    };
    assert_eq!(
        client(seen(&["0.12.0", "0.6.0"], false), Delivery::Relay).status,
        Status::Fail
    );
    assert_eq!(
        client(seen(&[], false), Delivery::Relay).status,
        Status::Skip
    );
    let untrusting = client(seen(&[], true), Delivery::Relay);
    assert_eq!(untrusting.status, Status::Ok);
    assert!(
        untrusting.detail.contains("legacy-builtin-roots"),
        "{}",
        untrusting.detail
    );
    assert_eq!(
        client(Seen::Unknown("x".into()), Delivery::TokenFileOnly).status,
        Status::Warn
    );
    assert_eq!(
        client(Seen::Unknown("x".into()), Delivery::Relay).status,
        Status::Skip
    );
}

#[test]
fn client_info_is_read_back_from_what_the_sidecar_exports() {
    let seen = crate::relay::clients::Seen::default();
    seen.refresh(Some(Version(0, 11, 3)));
    seen.refresh(None);
    seen.untrusting();
    let samples = seen.metric_samples();
    let samples: Vec<(&str, String)> = samples
        .iter()
        .map(|(l, n)| (l.as_str(), n.clone()))
        .collect();
    let mut text = String::from("polars_cloud_auth_ready 1\n");
    crate::serve::prom::family(&mut text, "client_info", "gauge", "h", &samples);
    assert_eq!(client_info(&text), (vec![Version(0, 11, 3)], true));
    assert_eq!(client_info("polars_cloud_auth_ready 1\n"), (vec![], false));
}

#[test]
fn failures_are_sorted_by_cause_and_a_proxy_loses_its_password() {
    assert_eq!(failure_kind(true, true, "x"), Failure::Timeout);
    assert_eq!(
        failure_kind(false, true, "invalid peer certificate: UnknownIssuer"),
        Failure::Tls
    );
    assert_eq!(
        failure_kind(false, true, "Connection refused (os error 111)"),
        Failure::Connect
    );
    assert_eq!(failure_kind(false, false, "odd"), Failure::Other);
    assert_eq!(
        redact_proxy("http://user:pa55@proxy.corp:3128"),
        "http://proxy.corp:3128"
    );
    let f = reachable(
        link::IDP,
        "https://auth.x/realms/Polars",
        Err((
            Failure::Tls,
            "invalid peer certificate: UnknownIssuer".into(),
        )),
        Some("http://proxy.corp:3128"),
    );
    assert_eq!(f.status, Status::Fail);
    assert!(f.fix.unwrap().contains("POLARS_CLOUD_CA_FILE"));
    let ok = reachable(link::BROKER, "https://b/token", Ok(405), None);
    assert_eq!(ok.status, Status::Ok);
    assert!(ok.detail.contains("HTTP 405"));
}
