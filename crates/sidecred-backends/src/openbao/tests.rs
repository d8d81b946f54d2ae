//! Pure parts of the OpenBao backend: option parsing, error mapping, config shape.

use super::client::by_status;
use super::*;
use crate::options::{OptionError, RawOptions, SecretField, SecretShape};
use sidecred_core::spec::Scope;

fn cfg(session_tokens: bool) -> OpenBaoConfig {
    let mut c: OpenBaoConfig = toml::from_str(
        "address = \"http://b:8200\"\n[auth]\nmethod = \"token_file\"\npath = \"/t\"\n",
    )
    .unwrap();
    c.session_tokens = session_tokens;
    c
}

fn prepare(path: &str, scope: Scope, options: &str) -> Result<Opts, OptionError> {
    let shape = SecretShape { path, scope };
    cfg(true).prepare(&shape, RawOptions::parse(options).unwrap())
}

#[test]
fn options_table() {
    let ok = [
        ("app/db", Scope::Shared, "{}", Kind::Kv2, "app/db", "secret"),
        (
            "/app/db/",
            Scope::Shared,
            "{ mount = \"kv\" }",
            Kind::Kv2,
            "app/db",
            "kv",
        ),
        (
            "database/creds/ro",
            Scope::Session,
            "{ engine = \"dynamic\" }",
            Kind::Dynamic,
            "database/creds/ro",
            "database",
        ),
        (
            "creds/ro",
            Scope::Call,
            "{ engine = \"dynamic\", mount = \"db2\" }",
            Kind::Dynamic,
            "db2/creds/ro",
            "db2",
        ),
        (
            "pki/issue/web",
            Scope::Session,
            "{ engine = \"pki\", common_name = \"a.test\" }",
            Kind::Pki,
            "pki/issue/web",
            "pki",
        ),
    ];
    for (path, scope, opts, kind, full, mount) in ok {
        let o = prepare(path, scope, opts).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (o.kind, o.path.as_str(), o.mount.as_str()),
            (kind, full, mount),
            "{path}"
        );
    }
    let pki = prepare(
        "pki/issue/web",
        Scope::Session,
        "{ engine = \"pki\", common_name = \"a.test\", alt_names = \"b.test\", cert_ttl = \"1h\" }",
    )
    .unwrap();
    let want = PkiRequest {
        common_name: "a.test".into(),
        alt_names: Some("b.test".into()),
        ttl: Some("1h".into()),
    };
    assert_eq!(pki.pki, Some(want));
    // Each refusal names the option (or the field) and points at it: byte offsets into the text.
    let bad = [
        (
            "a",
            "{ engine = \"kv1\" }",
            "unknown variant `kv1`, expected one of `kv2`, `dynamic`, `pki`",
            Some(11),
        ),
        (
            "a",
            "{ colour = \"red\" }",
            "unknown field `colour`",
            Some(2),
        ),
        (
            "a",
            "{ mount = 3 }",
            "invalid type: integer `3`, expected a string",
            Some(10),
        ),
        (
            "a",
            "{ on_retire = \"shred\" }",
            "unknown variant `shred`",
            Some(14),
        ),
        (
            "d/creds/x",
            "{ engine = \"dynamic\", on_retire = \"delete\" }",
            "option `on_retire`: applies to kv2 secrets only",
            Some(34),
        ),
        (
            "pki/sign/web",
            "{ engine = \"pki\", common_name = \"a\" }",
            "MOUNT/issue/ROLE",
            None,
        ),
        (
            "pki/issue/web",
            "{ engine = \"pki\" }",
            "option `common_name`: required",
            Some(0),
        ),
        (
            "pki/issue/web",
            "{ engine = \"pki\", common_name = \"a\", cert_ttl = \"soon\" }",
            "option `cert_ttl`: invalid duration `soon`",
            Some(48),
        ),
        (
            "a",
            "[\"kv2\"]",
            "expected a table of options, found array",
            Some(0),
        ),
    ];
    for (path, opts, want, at) in bad {
        let e = prepare(path, Scope::Session, opts).unwrap_err();
        assert!(e.to_string().contains(want), "{opts}: {e}");
        assert_eq!(e.span().map(|s| s.start), at, "{opts}: {e}");
    }
    let e = prepare(
        "pki/sign/web",
        Scope::Session,
        "{ engine = \"pki\", common_name = \"a\" }",
    );
    assert!(matches!(
        e,
        Err(OptionError::Secret {
            field: SecretField::Path,
            ..
        })
    ));
    // Without session tokens, only shared secrets may be dynamic.
    let shape = |scope| SecretShape {
        path: "database/creds/ro",
        scope,
    };
    let dynamic = || RawOptions::parse("{ engine = \"dynamic\" }").unwrap();
    let e = cfg(false)
        .prepare(&shape(Scope::Session), dynamic())
        .unwrap_err();
    assert!(
        matches!(
            e,
            OptionError::Secret {
                field: SecretField::Scope,
                ..
            }
        ),
        "{e}"
    );
    assert!(cfg(false).prepare(&shape(Scope::Shared), dynamic()).is_ok());
    // No options at all: KV v2 under `secret`.
    let o = cfg(true)
        .prepare(&shape(Scope::Shared), RawOptions::new(None))
        .unwrap();
    assert_eq!(
        (o.kind, o.mount.as_str(), o.pki),
        (Kind::Kv2, "secret", None)
    );
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
    assert!(c.validate().unwrap_err().to_string().contains("http"));
    let c = parse(
        "address = \"http://b\"\n[auth]\nmethod = \"jwt\"\nrole = \"r\"\njwt_file = \"rel\"\n",
    )
    .unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("absolute"));
}
