//! `[fleet]` as the config reads it.

use std::time::Duration;

fn parse(fleet: &str) -> Result<crate::fleet::FleetConfig, String> {
    let text = format!(
        "[server]\nworkload_socket = \"/tmp/a/w.sock\"\nadmin_socket = \"/tmp/b/a.sock\"\n\
         [backends.dev]\nkind = \"dev\"\n\
         [backends.bao]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:1\"\n\
         auth = {{ method = \"token_file\", path = \"/t\" }}\n[fleet]\n{fleet}\n"
    );
    super::Config::parse(std::path::Path::new("t.toml"), &text, &|_| None)
        .map(|c| c.fleet.expect("fleet"))
        .map_err(|e| e.to_string())
}

#[test]
fn config_table() {
    let ok = parse("backend = \"bao\"\nsidecar_id = \"pod-1\"").unwrap();
    assert_eq!(ok.prefix, "sidecred/fleet");
    assert_eq!(ok.poll_interval, Duration::from_millis(250));
    assert_eq!(ok.sidecar_id, "pod-1");
    let bad = [
        (
            "backend = \"nope\"",
            "fleet.backend: unknown backend `nope`",
        ),
        ("backend = \"dev\"", "needs an openbao backend"),
        ("backend = \"bao\"\nprefix = \"a/../b\"", "fleet.prefix"),
        (
            "backend = \"bao\"\npoll_interval = \"20s\"",
            "fleet.poll_interval",
        ),
        (
            "backend = \"bao\"\nsidecar_id = \"a/b\"",
            "fleet.sidecar_id",
        ),
        ("backend = \"bao\"\npoll = \"1s\"", "unknown field `poll`"),
    ];
    for (text, want) in bad {
        let e = parse(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.starts_with("t.toml:"), "{e}");
    }
}
