//! Pure parts of the OpenBao backend: option parsing, error mapping, config shape.

use super::client::by_status;
use super::*;
use crate::config::{Scope, Zone};

fn spec(path: &str, scope: Scope, options: &str) -> SecretSpec {
    SecretSpec {
        name: "s".into(),
        backend: "bao".into(),
        path: path.into(),
        zone: Zone::Internal,
        ttl: Duration::from_secs(60),
        grace: Duration::from_secs(10),
        scope,
        key: None,
        options: toml::from_str(options).unwrap(),
        schedule: None,
    }
}

#[test]
fn options_table() {
    let ok = [
        ("app/db", Scope::Shared, "", Kind::Kv2, "app/db", "secret"),
        (
            "/app/db/",
            Scope::Shared,
            "mount = \"kv\"",
            Kind::Kv2,
            "app/db",
            "kv",
        ),
        (
            "database/creds/ro",
            Scope::Session,
            "engine = \"dynamic\"",
            Kind::Dynamic,
            "database/creds/ro",
            "database",
        ),
        (
            "creds/ro",
            Scope::Call,
            "engine = \"dynamic\"\nmount = \"db2\"",
            Kind::Dynamic,
            "db2/creds/ro",
            "db2",
        ),
        (
            "pki/issue/web",
            Scope::Session,
            "engine = \"pki\"\ncommon_name = \"a.test\"",
            Kind::Pki,
            "pki/issue/web",
            "pki",
        ),
    ];
    for (path, scope, opts, kind, full, mount) in ok {
        let o = Opts::parse(&spec(path, scope, opts)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (o.kind, o.path.as_str(), o.mount.as_str()),
            (kind, full, mount),
            "{path}"
        );
    }
    let bad = [
        ("a", "engine = \"kv1\"", "expected kv2, dynamic or pki"),
        ("a", "colour = \"red\"", "unknown option `colour`"),
        ("a", "mount = 3", "must be a string"),
        ("a", "on_retire = \"shred\"", "expected keep or delete"),
        (
            "d/creds/x",
            "engine = \"dynamic\"\non_retire = \"delete\"",
            "kv2 secrets only",
        ),
        (
            "pki/sign/web",
            "engine = \"pki\"\ncommon_name = \"a\"",
            "MOUNT/issue/ROLE",
        ),
        ("pki/issue/web", "engine = \"pki\"", "common_name"),
        (
            "pki/issue/web",
            "engine = \"pki\"\ncommon_name = \"a\"\ncert_ttl = \"soon\"",
            "cert_ttl",
        ),
    ];
    for (path, opts, want) in bad {
        let e = Opts::parse(&spec(path, Scope::Session, opts)).unwrap_err();
        assert!(e.contains(want), "{opts}: {e}");
    }
}

type Check = fn(&BackendError) -> bool;

#[test]
fn status_mapping_table() {
    let cases: [(u16, &[&str], Check); 8] = [
        (
            403,
            &["permission denied"],
            |e| matches!(e, BackendError::Denied(m) if m.contains("lacks a policy")),
        ),
        (404, &[], |e| matches!(e, BackendError::NotFound(_))),
        (
            400,
            &["check-and-set parameter did not match the current version"],
            |e| matches!(e, BackendError::Precondition(_)),
        ),
        (400, &["invalid lease"], |e| {
            matches!(e, BackendError::Invalid(_))
        }),
        (
            503,
            &["Vault is sealed"],
            |e| matches!(e, BackendError::Unavailable(m) if m.contains("sealed")),
        ),
        (
            503,
            &[],
            |e| matches!(e, BackendError::Unavailable(m) if m.contains("sealed")),
        ),
        (429, &[], |e| e.is_transient()),
        (418, &[], |e| matches!(e, BackendError::Internal(_))),
    ];
    for (status, errors, check) in cases {
        let errors: Vec<String> = errors.iter().map(|s| s.to_string()).collect();
        let e = by_status("secret/data/x", status, &errors);
        assert!(check(&e), "{status} {errors:?} -> {e:?}");
        assert!(e.to_string().contains("secret/data/x"), "{e}");
    }
    let long = vec!["é".repeat(300)];
    assert!(by_status("p", 400, &long).to_string().len() < 400);
}

#[test]
fn config_shape() {
    let parse = |t: &str| toml::from_str::<OpenBaoConfig>(t);
    let c = parse("address = \"https://b:8200\"\n[auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id_file = \"/s\"\n").unwrap();
    assert!(matches!(&c.auth, AuthConfig::Approle { mount, .. } if mount == "approle"));
    assert!(c.session_tokens && c.validate().is_ok());
    let e = parse("address = \"https://b\"\n[auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id = \"inline\"\nsecret_id_file = \"/s\"\n").unwrap_err();
    assert!(e.to_string().contains("secret_id"), "{e}");
    let e = parse("address = \"https://b\"\n[auth]\nmethod = \"kerberos\"\n").unwrap_err();
    assert!(e.to_string().contains("kerberos"), "{e}");
    let c = parse("address = \"b:8200\"\n[auth]\nmethod = \"token_file\"\npath = \"t\"\n").unwrap();
    assert!(c.validate().unwrap_err().contains("http"));
    let c = parse(
        "address = \"http://b\"\n[auth]\nmethod = \"jwt\"\nrole = \"r\"\njwt_file = \"rel\"\n",
    )
    .unwrap();
    assert!(c.validate().unwrap_err().contains("absolute"));
}
