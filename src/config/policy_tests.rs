//! The policy as the config builds it: rules parsed from TOML, then asked.

use super::{map_lookup, Config};
use crate::policy::*;
use sidecred_core::identity::PeerIdentity;
use std::collections::HashMap;
use std::path::Path;

fn cfg(rules: &str) -> Config {
    let text = format!(
        r#"
[server]
workload_socket = "/tmp/a/w.sock"
admin_socket = "/tmp/b/a.sock"
[backends.dev]
kind = "dev"
[[secret]]
name = "tools/gh"
backend = "dev"
path = "gh"
zone = "external"
[[secret]]
name = "db/main"
backend = "dev"
path = "db"
zone = "restricted"
{rules}
"#
    );
    Config::parse(Path::new("t.toml"), &text, &map_lookup(HashMap::new())).unwrap()
}

fn id(uid: u32, exe: &str) -> PeerIdentity {
    PeerIdentity {
        uid,
        gid: uid,
        pid: 1,
        exe: Some(std::sync::Arc::from(std::path::Path::new(exe))),
        start_time: Some(1),
        proc_dir: None,
        reads: None,
    }
}

#[test]
fn decisions_name_the_rule() {
    let c = cfg(r#"
[[policy.workload]]
name = "router"
uids = [1000]
exe = "/usr/bin/*"
secrets = ["tools/*", "db/*"]
zones = ["internal", "external"]
"#);
    let p = &c.workload_policy;
    let gh = &c.secrets["tools/gh"];
    let db = &c.secrets["db/main"];
    assert_eq!(
        p.check_secret(&id(1000, "/usr/bin/router"), gh)
            .unwrap()
            .name,
        "router"
    );
    let e = p
        .check_secret(&id(1000, "/usr/bin/router"), db)
        .unwrap_err();
    assert!(
        e.contains("rule `router` does not grant zone `restricted`"),
        "{e}"
    );
    let e = p.check_secret(&id(1000, "/opt/evil"), gh).unwrap_err();
    assert!(
        e.contains("no policy.workload rule matches caller uid=1000"),
        "{e}"
    );
    let e = p
        .check_secret(&id(65534, "/usr/bin/router"), gh)
        .unwrap_err();
    assert!(e.contains("uid=65534"), "{e}");
}

#[test]
fn admin_actions() {
    let c = cfg(r#"
[[policy.admin]]
name = "rotator"
uids = [0]
actions = ["rotate"]
secrets = ["tools/*"]
[[policy.admin]]
name = "security"
uids = [0]
actions = ["revoke_session", "status"]
"#);
    let p = &c.admin_policy;
    assert!(p
        .check_action(&id(0, "/x"), Action::Rotate, Some("tools/gh"))
        .is_ok());
    assert!(p
        .check_action(&id(0, "/x"), Action::RevokeSession, None)
        .is_ok());
    let e = p
        .check_action(&id(0, "/x"), Action::ListSessions, None)
        .unwrap_err();
    assert!(e.contains("does not grant ListSessions"), "{e}");
    assert!(p.check_action(&id(5, "/x"), Action::Status, None).is_err());
}

#[test]
fn a_rule_must_match_on_something() {
    let text = r#"
[server]
workload_socket = "/tmp/a/w.sock"
admin_socket = "/tmp/b/a.sock"
[[policy.workload]]
name = "open"
secrets = ["*"]
"#;
    let e = Config::parse(Path::new("t.toml"), text, &map_lookup(HashMap::new())).unwrap_err();
    assert!(
        e.to_string().contains("must match on uids, gids or exe"),
        "{e}"
    );
}

#[test]
fn san_patterns_and_wildcards_are_checked_at_load() {
    let parse = |line: &str| {
        let text = format!(
            "[server]\nworkload_socket = \"/tmp/a/w.sock\"\nadmin_socket = \"/tmp/b/a.sock\"\n[[policy.workload]]\nname = \"r\"\nuids = [0]\n{line}\n"
        );
        Config::parse(Path::new("t.toml"), &text, &map_lookup(HashMap::new()))
    };
    assert!(parse("dns_sans = [\"*.svc.local\", \"web-?.svc.local\"]").is_ok());
    assert!(parse("wildcard_dns_sans = [\"*.svc.local\"]").is_ok());
    for (line, key) in [
        ("dns_sans = [\"a b.svc.local\"]", "dns_sans"),
        ("dns_sans = [\"a..local\"]", "dns_sans"),
        ("wildcard_dns_sans = [\"*.local\"]", "wildcard_dns_sans"),
        ("wildcard_dns_sans = [\"a.svc.local\"]", "wildcard_dns_sans"),
        ("wildcard_dns_sans = [\"*.*.local\"]", "wildcard_dns_sans"),
    ] {
        let e = parse(line).unwrap_err().to_string();
        assert!(e.contains(key), "{line}: {e}");
    }
    let c = parse("dns_sans = [\"*.svc.local\"]\nwildcard_dns_sans = [\"*.apps.local\"]").unwrap();
    let r = c.workload_policy.caller_rule(&id(0, "/x")).unwrap();
    assert!(r.sans.allows_dns("a.svc.local") && !r.sans.allows_dns("*.svc.local"));
    assert!(r.sans.allows_dns("*.apps.local") && !r.sans.allows_dns("x.apps.local"));
}
