use super::*;
use crate::backend::CompiledOptions;
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

#[test]
fn option_errors_point_into_the_options() {
    let with = |extra: &str| {
        BASE.replace(
            "zone = \"internal\"",
            &format!("zone = \"internal\"{extra}"),
        )
    };
    // (text, line, column, key, message)
    let cases = [
        (
            with("\noptions = { dynamik = true }"),
            15,
            13,
            "secret[0].options",
            "unknown field `dynamik`, expected `dynamic`",
        ),
        (
            with("\noptions = { dynamic = 1 }"),
            15,
            23,
            "secret[0].options",
            "invalid type: integer `1`, expected a boolean",
        ),
        (
            with("\n\n[secret.options]\ndynamic = \"no\""),
            17,
            11,
            "secret[0].options",
            "expected a boolean",
        ),
        (
            with("\noptions = \"dynamic\""),
            15,
            11,
            "secret[0].options",
            "expected a table of options, found string",
        ),
    ];
    for (text, line, column, key, needle) in cases {
        let e = parse(&text).unwrap_err();
        let shown = e.to_string();
        assert_eq!((e.line, e.column), (line, column), "{shown}");
        assert_eq!(e.key, key, "{shown}");
        assert!(shown.contains(needle), "{shown}");
    }
    let c = parse(&with("\noptions = { dynamic = true }")).unwrap();
    assert!(matches!(&c.secrets["s"].options, CompiledOptions::Dev(o) if o.dynamic));
    let c = parse(BASE).unwrap();
    assert!(matches!(&c.secrets["s"].options, CompiledOptions::Dev(o) if !o.dynamic));
}

#[test]
fn scope_errors_point_at_the_scope() {
    let text = BASE.replace("[backends.dev]", "[backends.ca]\nkind = \"ca\"\ntrust_domain = \"example.org\"\ngenerate = true\n\n[backends.dev]")
        .replace("backend = \"dev\"", "backend = \"ca\"")
        .replace("zone = \"internal\"", "zone = \"internal\"\nscope = \"shared\"");
    let e = parse(&text).unwrap_err();
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (20, 9, "secret[0].scope"),
        "{e}"
    );
    assert!(e.to_string().contains("private key per caller"), "{e}");
}
