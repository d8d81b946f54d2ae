//! Backend options are compiled at config load: through the real binary, a typo or a wrong type
//! in a secret's `options` is refused by `check-config` (and by `serve`) with file:line:col,
//! for every backend kind, before any backend is reached.

mod common;

use common::*;
use std::process::Command;

const HEAD: &str = r#"[server]
workload_socket = "/tmp/sidecred-opts/w/w.sock"
admin_socket = "/tmp/sidecred-opts/a/a.sock"

[backends.dev]
kind = "dev"
values = { "a" = "seed-canary-5150" }

[backends.bao]
kind = "openbao"
address = "http://127.0.0.1:1"
auth = { method = "token_file", path = "/nonexistent/sidecred-token" }

[backends.aws]
kind = "aws"
region = "us-east-1"
endpoint = "http://127.0.0.1:1"

[backends.ca]
kind = "ca"
trust_domain = "example.org"
generate = true
"#;

/// One secret of `backend` whose options line is `options` (line 30 of the file).
fn config(backend: &str, scope: &str, options: &str) -> String {
    format!(
        "{HEAD}\n[[secret]]\nname = \"s\"\nbackend = \"{backend}\"\npath = \"pki/issue/web\"\nzone = \"internal\"\nscope = \"{scope}\"\n{options}\n"
    )
}

/// Runs `sidecred ARGS FILE` on `text`; returns the exit code and stderr.
fn run(args: &[&str], text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("opts.toml");
    std::fs::write(&f, text).unwrap();
    let o = Command::new(BIN).args(args).arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o.status.code(), err, f.display().to_string())
}

#[test]
fn check_config_accepts_good_options_of_every_kind() {
    for (backend, scope, options) in [
        ("dev", "shared", "options = { dynamic = true }"),
        ("bao", "session", "options = { engine = \"pki\", common_name = \"a.test\", cert_ttl = \"1h\" }"),
        ("aws", "shared", "options = { stage = \"blue\", password_length = 24, verify_command = [\"true\"], verify_timeout = \"2s\" }"),
        ("ca", "session", "options = { dns_sans = [\"a.svc.local\"], ip_sans = [\"127.0.0.1\"] }"),
    ] {
        let (code, err, _) = run(&["check-config"], &config(backend, scope, options));
        assert_eq!(code, Some(0), "{backend}: {err}");
    }
}

#[test]
fn check_config_points_at_a_bad_option_of_every_kind() {
    // (backend, scope, options line, column, message)
    let cases = [
        (
            "dev",
            "shared",
            "options = { dynamik = true }",
            13,
            "unknown field `dynamik`, expected `dynamic`",
        ),
        (
            "dev",
            "shared",
            "options = { dynamic = \"yes\" }",
            23,
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "bao",
            "session",
            "options = { engine = \"pki\", comon_name = \"a\" }",
            29,
            "unknown field `comon_name`",
        ),
        (
            "bao",
            "session",
            "options = { engine = \"kv3\" }",
            22,
            "unknown variant `kv3`, expected one of `kv2`, `dynamic`, `pki`",
        ),
        (
            "bao",
            "session",
            "options = { engine = \"pki\", common_name = \"a\", cert_ttl = \"1 hour\" }",
            59,
            "option `cert_ttl`: invalid duration `1 hour`",
        ),
        (
            "aws",
            "shared",
            "options = { stag = \"blue\" }",
            13,
            "unknown field `stag`",
        ),
        (
            "aws",
            "shared",
            "options = { password_length = \"32\" }",
            31,
            "invalid type: string \"32\", expected i64",
        ),
        (
            "aws",
            "shared",
            "options = { password_classes = [\"lower\", \"emoji\"] }",
            42,
            "unknown variant `emoji`",
        ),
        (
            "aws",
            "shared",
            "options = { verify_timeout = \"3s\" }",
            30,
            "option `verify_timeout`: needs `verify_command`",
        ),
        (
            "ca",
            "session",
            "options = { dns_san = [\"a.local\"] }",
            13,
            "unknown field `dns_san`, expected `dns_sans` or `ip_sans`",
        ),
        (
            "ca",
            "session",
            "options = { ip_sans = [\"127.0.0.1\", \"localhost\"] }",
            37,
            "option `ip_sans`: `localhost` is not an IP address",
        ),
        (
            "ca",
            "session",
            "options = { ip_sans = \"127.0.0.1\" }",
            23,
            "expected a sequence",
        ),
    ];
    for (backend, scope, options, column, needle) in cases.into_iter().chain([
        // Malformed shapes: a nested table, an array of tables, a value too large for its type.
        (
            "dev",
            "shared",
            "options = { dynamic = { on = true } }",
            23,
            "expected a boolean",
        ),
        (
            "aws",
            "shared",
            "options = { password_length = 99999999999999999999 }",
            31,
            "integer",
        ),
        (
            "ca",
            "session",
            "options = { dns_sans = [{ a = 1 }] }",
            25,
            "expected a string",
        ),
    ]) {
        let text = config(backend, scope, options);
        let (code, err, file) = run(&["check-config"], &text);
        assert_eq!(code, Some(2), "{options}: {err}");
        let at = format!("{file}:30:{column}: secret[0].options: ");
        assert!(err.starts_with(&at), "{options}: want `{at}`, got {err}");
        assert!(err.contains(needle), "{options}: {err}");
        assert_eq!(err.lines().count(), 1, "one line, no TOML snippet: {err}");
        assert!(!err.contains("seed-canary"), "{err}");
    }
}

#[test]
fn options_that_do_not_fit_the_secret_name_its_field() {
    let (code, err, file) = run(&["check-config"], &config("ca", "shared", ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with(&format!("{file}:29:9: secret[0].scope: ")),
        "{err}"
    );
    let text = config(
        "bao",
        "session",
        "options = { engine = \"pki\", common_name = \"a\" }",
    )
    .replace("pki/issue/web", "pki/sign/web");
    let (code, err, file) = run(&["check-config"], &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with(&format!("{file}:27:8: secret[0].path: ")),
        "{err}"
    );
    assert!(err.contains("MOUNT/issue/ROLE"), "{err}");
}

#[test]
fn serve_refuses_a_bad_option_with_the_same_position() {
    let text = config("dev", "shared", "options = { dynamik = true }");
    let (check, check_err, _) = run(&["check-config"], &text);
    let (serve, serve_err, file) = run(&["serve", "--config"], &text);
    assert_eq!((check, serve), (Some(2), Some(2)), "{serve_err}");
    assert!(serve_err.contains(&format!("{file}:30:13:")), "{serve_err}");
    let tail = |s: &str| s.split_once(":30:13: ").map(|(_, t)| t.trim().to_string());
    assert_eq!(tail(&check_err), tail(&serve_err));
    assert!(tail(&check_err).is_some(), "{check_err}");
}
