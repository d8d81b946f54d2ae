use super::*;
use std::collections::HashMap;

const BASE: &str = r#"
[server]
workload_socket = "/tmp/a/w.sock"
admin_socket = "/tmp/b/a.sock"

[backends.dev]
kind = "dev"
values = { "p" = "v" }

[[secret]]
name = "s"
backend = "dev"
path = "p"
zone = "internal"

[[policy.workload]]
name = "all"
uids = ["*"]
secrets = ["*"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let env = map_lookup(HashMap::from([("PORT", "8200")]));
    Config::parse(Path::new("t.toml"), text, &env)
}

#[test]
fn base_parses() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.secrets["s"].zone, Zone::Internal);
    assert_eq!(c.server.workload_socket_mode, 0o660);
}

#[test]
fn errors_name_line_column_and_key() {
    let cases = [
        (
            BASE.replace("zone = \"internal\"", "zone = \"intranet\""),
            14,
            "unknown variant `intranet`",
        ),
        (
            BASE.replace("path = \"p\"", "path = \"p\"\ncolour = 1"),
            14,
            "unknown field `colour`",
        ),
        (
            BASE.replace("backend = \"dev\"\npath", "backend = \"nope\"\npath"),
            12,
            "unknown backend `nope`",
        ),
        (
            BASE.replace("name = \"s\"", "name = \"../x\""),
            11,
            "secret[0].name",
        ),
        (
            BASE.replace("/tmp/b/a.sock", "/tmp/a/a.sock"),
            4,
            "must not be in the workload socket's directory",
        ),
        (BASE.replace("\"/tmp/b/a.sock\"", "\"${NOPE}\""), 4, "NOPE"),
    ];
    for (text, line, needle) in cases {
        let e = parse(&text).unwrap_err();
        let shown = e.to_string();
        assert_eq!(e.line, line, "{shown}");
        assert!(e.column > 0, "{shown}");
        assert!(shown.starts_with("t.toml:"), "{shown}");
        assert!(shown.contains(needle), "{shown}");
    }
}

#[test]
fn interpolation_in_any_string() {
    let c = parse(&BASE.replace("/tmp/a/w.sock", "/tmp/a/${PORT}.sock")).unwrap();
    assert_eq!(c.server.workload_socket, PathBuf::from("/tmp/a/8200.sock"));
}

#[test]
fn debug_of_a_config_never_shows_seed_values() {
    let c = parse(&BASE.replace("\"p\" = \"v\"", "\"p\" = \"seed-canary-31\"")).unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("\"p\""), "paths stay visible: {shown}");
    assert!(!shown.contains("seed-canary-31"), "{shown}");
}
