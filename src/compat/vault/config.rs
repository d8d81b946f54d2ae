//! `[vault_api]`: where the Vault-compatible endpoint listens and which Vault paths name which
//! catalog secrets.
//!
//! ```toml
//! [vault_api]
//! socket = "/run/sidecred/vault.sock"
//! socket_mode = "0660"
//! # tcp = "127.0.0.1:8200"            # loopback only
//! login_path = "auth/sidecred/login"   # POST here opens a session; its id is the client token
//!
//! [[vault_api.kv]]                     # KV v2: GET /v1/secret/data/app/db[?version=N], /metadata/; LIST
//! mount = "secret"
//! path = "app/db"
//! secret = "app/db"
//! [[vault_api.kv]]
//! mount = "secret"
//! path = "tools/*"                     # a trailing `*` maps a whole subtree
//! secret = "tools/*"
//!
//! [[vault_api.leased]]                 # GET /v1/database/creds/ro: lease_id, lease_duration
//! path = "database/creds/ro"
//! secret = "db/readonly"
//! ```
//!
//! `field` names the one key of `data` when the secret's value is a single string (default:
//! the secret's own `key`, else `value`); a value that is a JSON object is served as it is.

use serde::Deserialize;
use sidecred_core::spec::check_segments;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultApi {
    socket: String,
    #[serde(default = "default_mode")]
    socket_mode: String,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default = "default_login")]
    login_path: String,
    #[serde(default)]
    kv: Vec<RawMapping>,
    #[serde(default)]
    leased: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    #[serde(default)]
    mount: Option<String>,
    path: String,
    secret: String,
    #[serde(default)]
    field: Option<String>,
}

fn default_mode() -> String {
    "0660".into()
}
fn default_login() -> String {
    "auth/sidecred/login".into()
}

/// A path or name, exact or a subtree (`a/b/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.strip_suffix("/*") {
            Some(p) => Pattern::Prefix(format!("{p}/")),
            None if s == "*" => Pattern::Prefix(String::new()),
            None => Pattern::Exact(s.to_string()),
        }
    }
}

/// One Vault path (or subtree) and the catalog secret (or subtree) it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    mount: String,
    path: Pattern,
    secret: Pattern,
    field: Option<String>,
}

/// What a request path resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub secret: String,
    pub field: Option<String>,
}

impl Mapping {
    /// Whether this mapping names `path` (what `resolve` checks, without building the target).
    fn matches(&self, path: &str) -> bool {
        match &self.path {
            Pattern::Exact(p) => p == path,
            Pattern::Prefix(p) => path.strip_prefix(p.as_str()).is_some_and(|r| !r.is_empty()),
        }
    }

    /// The secret this path names, with the precision of the match (longer wins).
    fn resolve(&self, path: &str) -> Option<(usize, Target)> {
        let (len, secret) = match (&self.path, &self.secret) {
            (Pattern::Exact(p), Pattern::Exact(s)) if p == path => (usize::MAX, s.clone()),
            (Pattern::Prefix(p), Pattern::Prefix(s)) => {
                let rest = path.strip_prefix(p.as_str()).filter(|r| !r.is_empty())?;
                (p.len(), format!("{s}{rest}"))
            }
            _ => return None,
        };
        Some((
            len,
            Target {
                secret,
                field: self.field.clone(),
            },
        ))
    }
}

/// Validated `[vault_api]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultApiConfig {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub tcp: Option<SocketAddr>,
    /// Without `/v1/`, e.g. `auth/sidecred/login`.
    pub login_path: String,
    kv: Vec<Mapping>,
    leased: Vec<Mapping>,
}

impl VaultApiConfig {
    /// Whether `mount` is a configured KV v2 mount.
    pub fn is_kv_mount(&self, mount: &str) -> bool {
        self.kv.iter().any(|m| m.mount == mount)
    }

    /// The KV mount a request path starts with (the longest), and the rest after `mount/`.
    pub fn split_kv<'p>(&self, path: &'p str) -> Option<(&str, &'p str)> {
        self.kv
            .iter()
            .filter_map(|m| {
                let rest = path.strip_prefix(m.mount.as_str())?.strip_prefix('/')?;
                Some((m.mount.as_str(), rest))
            })
            .max_by_key(|(m, _)| m.len())
    }

    /// The secret behind `path` of KV mount `mount`.
    pub fn kv(&self, mount: &str, path: &str) -> Option<Target> {
        best(self.kv.iter().filter(|m| m.mount == mount), path)
    }

    /// Every request path of KV mount `mount` that a mapping could name: exact paths, and for
    /// a subtree each of `secrets` under its secret prefix. Callers resolve each with [`kv`]
    /// (the best mapping wins, as for reads) before showing it.
    ///
    /// [`kv`]: VaultApiConfig::kv
    pub fn kv_paths<'a>(&'a self, mount: &'a str, secrets: &'a [&'a str]) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.kv.iter().filter(|m| m.mount == mount) {
            match (&m.path, &m.secret) {
                (Pattern::Exact(p), _) => out.push(p.clone()),
                (Pattern::Prefix(p), Pattern::Prefix(s)) => out.extend(
                    secrets
                        .iter()
                        .filter_map(|n| n.strip_prefix(s.as_str()))
                        .filter(|rest| !rest.is_empty())
                        .map(|rest| format!("{p}{rest}")),
                ),
                _ => {}
            }
        }
        out
    }

    /// Whether some leased mapping names `path` (no allocation: the metrics' route class).
    pub fn is_leased(&self, path: &str) -> bool {
        self.leased.iter().any(|m| m.matches(path))
    }

    /// The secret behind a leased-read path.
    pub fn leased(&self, path: &str) -> Option<Target> {
        best(self.leased.iter(), path)
    }
}

fn best<'a>(maps: impl Iterator<Item = &'a Mapping>, path: &str) -> Option<Target> {
    maps.filter_map(|m| m.resolve(path))
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

impl RawVaultApi {
    /// Checks the section against the catalog; errors name the key.
    /// `known` says whether a name is a `[[secret]]`.
    pub fn validate(
        self,
        known: &dyn Fn(&str) -> bool,
        admin_socket: &std::path::Path,
    ) -> Result<VaultApiConfig, (String, String)> {
        let err = |k: &str, m: String| (format!("vault_api.{k}"), m);
        let socket = PathBuf::from(&self.socket);
        if !socket.is_absolute() {
            return Err(err("socket", "expected an absolute path".into()));
        }
        if socket.parent() == admin_socket.parent() {
            return Err(err(
                "socket",
                "must not be in the admin socket's directory".into(),
            ));
        }
        let socket_mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                err(
                    "socket_mode",
                    format!(
                        "expected an octal file mode such as \"0660\", got \"{}\"",
                        self.socket_mode
                    ),
                )
            })?;
        let tcp = match &self.tcp {
            None => None,
            Some(t) => {
                let a: SocketAddr = t.parse().map_err(|_| {
                    err(
                        "tcp",
                        format!("expected an address such as 127.0.0.1:8200, got `{t}`"),
                    )
                })?;
                if !a.ip().is_loopback() {
                    return Err(err(
                        "tcp",
                        "must be a loopback address (callers are identified by their local socket)"
                            .into(),
                    ));
                }
                Some(a)
            }
        };
        check_segments("login_path", &self.login_path).map_err(|m| err("login_path", m))?;
        if !self.login_path.starts_with("auth/") {
            return Err(err(
                "login_path",
                format!("`{}` must start with `auth/`", self.login_path),
            ));
        }
        let kv = mappings(self.kv, "kv", true, known)?;
        let leased = mappings(self.leased, "leased", false, known)?;
        for l in &leased {
            let p = match &l.path {
                Pattern::Exact(p) | Pattern::Prefix(p) => p,
            };
            if let Some(k) = kv.iter().find(|k| p.starts_with(&format!("{}/", k.mount))) {
                return Err(err(
                    "leased",
                    format!("path `{p}` lies under KV mount `{}`", k.mount),
                ));
            }
            if p.starts_with("sys/") || p.starts_with("auth/") {
                return Err(err(
                    "leased",
                    format!("path `{p}` is reserved (sys/ and auth/)"),
                ));
            }
        }
        Ok(VaultApiConfig {
            socket,
            socket_mode,
            tcp,
            login_path: self.login_path,
            kv,
            leased,
        })
    }
}

fn mappings(
    raw: Vec<RawMapping>,
    table: &str,
    kv: bool,
    known: &dyn Fn(&str) -> bool,
) -> Result<Vec<Mapping>, (String, String)> {
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |f: &str| format!("vault_api.{table}[{i}].{f}");
        let mount = match (kv, r.mount) {
            (true, Some(m)) => {
                check_segments("mount", &m).map_err(|e| (key("mount"), e))?;
                if m == "sys" || m == "auth" || m.starts_with("sys/") || m.starts_with("auth/") {
                    return Err((key("mount"), format!("`{m}` is reserved")));
                }
                m
            }
            (true, None) => return Err((key("mount"), "required: the KV v2 mount".into())),
            (false, Some(_)) => {
                return Err((key("mount"), "leased paths are full paths; no mount".into()))
            }
            (false, None) => String::new(),
        };
        let (path, secret) = (Pattern::parse(&r.path), Pattern::parse(&r.secret));
        match (&path, &secret) {
            (Pattern::Exact(p), Pattern::Exact(s)) => {
                check_segments("path", p).map_err(|e| (key("path"), e))?;
                if !known(s) {
                    return Err((key("secret"), format!("`{s}` is not a [[secret]] name")));
                }
            }
            (Pattern::Prefix(p), Pattern::Prefix(s)) => {
                for (what, v) in [("path", p), ("secret", s)] {
                    if !v.is_empty() {
                        check_segments(what, v.trim_end_matches('/'))
                            .map_err(|e| (key(what), e))?;
                    }
                }
            }
            _ => {
                return Err((
                    key("secret"),
                    "path and secret must both end in `/*` (a subtree) or neither".into(),
                ))
            }
        }
        if let Some(f) = &r.field {
            if f.is_empty() || f.len() > 128 {
                return Err((key("field"), "must be 1-128 bytes".into()));
            }
        }
        out.push(Mapping {
            mount,
            path,
            secret,
            field: r.field,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<VaultApiConfig, (String, String)> {
        let raw: RawVaultApi = toml::from_str(text).map_err(|e| (String::new(), e.to_string()))?;
        let known = |n: &str| ["app/db", "db/ro"].contains(&n);
        raw.validate(&known, std::path::Path::new("/run/admin/a.sock"))
    }

    const BASE: &str = r#"
socket = "/run/v/v.sock"
[[kv]]
mount = "secret"
path = "app/db"
secret = "app/db"
[[kv]]
mount = "secret"
path = "tools/*"
secret = "t/*"
field = "token"
[[kv]]
mount = "kv/team"
path = "*"
secret = "team/*"
[[leased]]
path = "database/creds/ro"
secret = "db/ro"
"#;

    #[test]
    fn resolves_exact_subtree_and_nested_mounts() {
        let c = cfg(BASE).unwrap();
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.login_path, "auth/sidecred/login");
        assert_eq!(c.kv("secret", "app/db").unwrap().secret, "app/db");
        let t = c.kv("secret", "tools/gh/a").unwrap();
        assert_eq!(
            (t.secret.as_str(), t.field.as_deref()),
            ("t/gh/a", Some("token"))
        );
        assert_eq!(c.kv("secret", "tools/"), None);
        assert_eq!(c.kv("secret", "app/dbx"), None);
        assert_eq!(c.split_kv("kv/team/data/x"), Some(("kv/team", "data/x")));
        assert_eq!(
            c.split_kv("secret/data/app/db"),
            Some(("secret", "data/app/db"))
        );
        assert_eq!(c.split_kv("secretx/data/a"), None);
        assert_eq!(c.kv("kv/team", "x/y").unwrap().secret, "team/x/y");
        assert_eq!(c.leased("database/creds/ro").unwrap().secret, "db/ro");
        assert!(c.is_leased("database/creds/ro") && !c.is_leased("database/creds"));
        assert!(c.is_kv_mount("secret") && !c.is_kv_mount("database"));
        let names = ["app/db", "t/gh/a", "t/x", "team/y", "other"];
        let mut paths = c.kv_paths("secret", &names);
        paths.sort();
        assert_eq!(paths, ["app/db", "tools/gh/a", "tools/x"]);
        assert_eq!(c.kv_paths("kv/team", &names), ["y"]);
    }

    #[test]
    fn refuses_bad_sections() {
        for (bad, key) in [
            (
                BASE.replace("app/db\"\nsecret = \"app/db", "app/db\"\nsecret = \"nope"),
                "secret",
            ),
            (
                BASE.replace("path = \"app/db\"", "path = \"app/../db\""),
                "path",
            ),
            (BASE.replace("\"tools/*\"", "\"tools\""), "secret"),
            (BASE.replace("/run/v/v.sock", "v.sock"), "socket"),
            (BASE.replace("/run/v/v.sock", "/run/admin/v.sock"), "socket"),
            (format!("tcp = \"0.0.0.0:8200\"\n{BASE}"), "tcp"),
            (format!("login_path = \"x/login\"\n{BASE}"), "login_path"),
            (BASE.replace("database/creds/ro", "secret/x"), "leased"),
            (
                BASE.replace("mount = \"kv/team\"", "mount = \"sys\""),
                "mount",
            ),
        ] {
            let e = cfg(&bad).unwrap_err();
            assert!(e.0.contains(key), "{bad}: {e:?}");
        }
        assert!(cfg(&format!("colour = 1\n{BASE}")).is_err());
    }
}
