//! `[proxy]`: where the credential-injection forward proxy listens, which destinations it
//! injects into (`[[proxy.rule]]`), how it reaches them (zones, the corporate egress proxy) and
//! its limits. Everything is checked at load: a rule naming an unknown secret, a header template
//! without `{value}` or a non-loopback listen address is a config error with its position.

use crate::api::tcp_peer::loopback_addr;
use serde::Deserialize;
use sidecred_core::duration::Dur;
use sidecred_core::spec::Zone;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Loopback TCP address, e.g. "127.0.0.1:3128".
    pub listen: String,
    /// A Unix socket as well, for clients that reach a proxy that way (placed and checked like
    /// every other socket; callers identified by SO_PEERCRED).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Lifetime of sessions opened through the proxy (default: `server.default_session_ttl`).
    #[serde(default)]
    pub session_ttl: Option<Dur>,
    /// What a CONNECT to a destination no rule names gets: "refuse" (403) or "tunnel".
    #[serde(default = "default_unmatched")]
    pub unmatched: String,
    /// Ports an unmatched CONNECT may tunnel to (with `unmatched = "tunnel"`).
    #[serde(default = "default_tunnel_ports")]
    pub tunnel_ports: Vec<u16>,
    /// Zone of destinations no rule names (decides direct or through `egress_proxy`).
    #[serde(default = "default_zone")]
    pub unmatched_zone: Zone,
    /// Where the bundle agents trust (`SSL_CERT_FILE`) is written at start.
    #[serde(default)]
    pub ca_bundle_file: Option<PathBuf>,
    /// The CA that signs the leaves presented to agents; default: generated in memory.
    #[serde(default)]
    pub ca_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_key_file: Option<PathBuf>,
    /// Trust anchors for upstream TLS; default: the system roots.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// The corporate egress proxy `external` destinations go through, "host:port".
    #[serde(default)]
    pub egress_proxy: Option<String>,
    /// Requests per second per session (token bucket; 0 = unlimited), and the bucket's size.
    #[serde(default)]
    pub session_rate: f64,
    #[serde(default)]
    pub session_burst: Option<f64>,
    /// Requests per second per destination host (0 = unlimited), and the bucket's size.
    #[serde(default)]
    pub destination_rate: f64,
    #[serde(default)]
    pub destination_burst: Option<f64>,
    /// Request line and headers together; larger ones get 431.
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: usize,
    /// Upstream connect (TCP, egress CONNECT and TLS handshake) must finish within this.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub host: String,
    /// Default: 443 for https, 80 for http.
    #[serde(default)]
    pub port: Option<u16>,
    /// "https" (TLS terminated here and originated again) or "http".
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Methods the rule applies to (default: all).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The secret injected, and how: exactly one of `header`, `basic`, `query` (or none, for
    /// rules that only substitute placeholders or present a client certificate).
    #[serde(default)]
    pub secret: Option<String>,
    /// "Name: template", `{value}` replaced by the secret, e.g. "Authorization: Bearer {value}".
    #[serde(default)]
    pub header: Option<String>,
    /// Basic auth from a JSON secret's fields: `["username", "password"]`.
    #[serde(default)]
    pub basic: Option<[String; 2]>,
    /// A query parameter carrying the value.
    #[serde(default)]
    pub query: Option<String>,
    /// Secrets whose `{{sidecred:NAME}}` placeholders are replaced in this rule's requests.
    #[serde(default)]
    pub placeholders: Vec<String>,
    /// A CA-backed secret whose certificate and key are presented to the origin (mTLS).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Zone of the destination (default: the secret's zone, else `internal`).
    #[serde(default)]
    pub zone: Option<Zone>,
    /// Addresses the host must resolve to (default: any).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

fn default_socket_mode() -> String {
    "0660".into()
}
fn default_unmatched() -> String {
    "refuse".into()
}
fn default_tunnel_ports() -> Vec<u16> {
    vec![443]
}
fn default_zone() -> Zone {
    Zone::External
}
fn default_header_bytes() -> usize {
    16 * 1024
}
fn default_scheme() -> String {
    "https".into()
}

/// How the rule's secret goes on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Wire {
    None,
    Header {
        name: http::HeaderName,
        template: String,
    },
    Basic {
        user: String,
        pass: String,
    },
    Query(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub path_prefix: Option<String>,
    pub methods: Vec<http::Method>,
    pub secret: Option<String>,
    pub wire: Wire,
    pub placeholders: Vec<String>,
    pub client_cert: Option<String>,
    pub zone: Zone,
    pub addresses: Vec<IpAddr>,
}

impl Rule {
    /// Whether the rule applies to this request.
    pub fn matches(
        &self,
        tls: bool,
        host: &str,
        port: u16,
        method: &http::Method,
        path: &str,
    ) -> bool {
        self.tls == tls
            && self.port == port
            && self.host.eq_ignore_ascii_case(host)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub socket: Option<(PathBuf, u32)>,
    pub session_ttl: Option<Duration>,
    pub tunnel_unmatched: bool,
    pub tunnel_ports: Vec<u16>,
    pub unmatched_zone: Zone,
    pub ca_bundle_file: Option<PathBuf>,
    pub ca_files: Option<(PathBuf, PathBuf)>,
    pub upstream_ca_file: Option<PathBuf>,
    pub egress_proxy: Option<(String, u16)>,
    pub session_rate: (f64, f64),
    pub destination_rate: (f64, f64),
    pub max_header_bytes: usize,
    pub connect_timeout: Duration,
    pub rules: Vec<Rule>,
}

fn host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    (!h.is_empty()).then(|| Some((h.to_string(), p.parse().ok()?)))?
}

type Err = (&'static str, String);

impl RawProxy {
    /// `secret_zone(name)` is the zone of a configured secret, None when there is no such secret.
    pub fn validate(self, secret_zone: &dyn Fn(&str) -> Option<Zone>) -> Result<ProxyConfig, Err> {
        let listen = loopback_addr(&self.listen).map_err(|m| ("proxy.listen", m))?;
        let socket = match self.socket {
            Some(p) if !p.is_absolute() => {
                return Err(("proxy.socket", "must be an absolute path".into()))
            }
            Some(p) => {
                let mode = u32::from_str_radix(&self.socket_mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or((
                        "proxy.socket_mode",
                        format!(
                            "expected an octal mode such as \"0660\", got \"{}\"",
                            self.socket_mode
                        ),
                    ))?;
                Some((p, mode))
            }
            None => None,
        };
        let tunnel_unmatched = match self.unmatched.as_str() {
            "refuse" => false,
            "tunnel" => true,
            o => {
                return Err((
                    "proxy.unmatched",
                    format!("`{o}`: expected \"refuse\" or \"tunnel\""),
                ))
            }
        };
        let ca_files = match (self.ca_cert_file, self.ca_key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err((
                    "proxy.ca_cert_file",
                    "set ca_cert_file and ca_key_file together".into(),
                ))
            }
        };
        let egress_proxy = match &self.egress_proxy {
            Some(s) => Some(
                host_port(s.trim_start_matches("http://").trim_end_matches('/')).ok_or((
                    "proxy.egress_proxy",
                    format!("`{s}`: expected host:port such as \"proxy.corp:3128\""),
                ))?,
            ),
            None => None,
        };
        let rate = |key: &'static str, r: f64, b: Option<f64>| {
            if !(0.0..=1e6).contains(&r) || b.is_some_and(|b| !(1.0..=1e6).contains(&b)) {
                return Err((
                    key,
                    "rates are 0 (unlimited) to 1e6 per second; bursts 1 to 1e6".into(),
                ));
            }
            Ok((r, b.unwrap_or(r.max(1.0))))
        };
        if !(1024..=1 << 20).contains(&self.max_header_bytes) {
            return Err((
                "proxy.max_header_bytes",
                "must be between 1024 and 1048576".into(),
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in self.rules.into_iter().enumerate() {
            let rule = r
                .validate(secret_zone)
                .map_err(|(k, m)| (k, format!("rule[{i}]: {m}")))?;
            if rules.iter().any(|o: &Rule| o.name == rule.name) {
                return Err((
                    "proxy.rule.name",
                    format!("duplicate rule name `{}`", rule.name),
                ));
            }
            rules.push(rule);
        }
        Ok(ProxyConfig {
            listen,
            socket,
            session_ttl: self.session_ttl.map(|d| d.0),
            tunnel_unmatched,
            tunnel_ports: self.tunnel_ports,
            unmatched_zone: self.unmatched_zone,
            ca_bundle_file: self.ca_bundle_file,
            ca_files,
            upstream_ca_file: self.upstream_ca_file,
            egress_proxy,
            session_rate: rate("proxy.session_rate", self.session_rate, self.session_burst)?,
            destination_rate: rate(
                "proxy.destination_rate",
                self.destination_rate,
                self.destination_burst,
            )?,
            max_header_bytes: self.max_header_bytes,
            connect_timeout: self
                .connect_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            rules,
        })
    }
}

impl RawRule {
    fn validate(self, secret_zone: &dyn Fn(&str) -> Option<Zone>) -> Result<Rule, Err> {
        let tls = match self.scheme.as_str() {
            "https" => true,
            "http" => false,
            o => {
                return Err((
                    "proxy.rule.scheme",
                    format!("`{o}`: expected \"https\" or \"http\""),
                ))
            }
        };
        if self.host.is_empty()
            || !self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err((
                "proxy.rule.host",
                format!("`{}` is not a host name", self.host.escape_debug()),
            ));
        }
        let known = |n: &str| {
            secret_zone(n).ok_or((
                "proxy.rule.secret",
                format!("`{n}` is not a configured secret"),
            ))
        };
        let mut zone = None;
        if let Some(s) = &self.secret {
            zone = Some(known(s)?);
        }
        for p in &self.placeholders {
            known(p)?;
        }
        if let Some(c) = &self.client_cert {
            known(c)?;
            if !tls {
                return Err(("proxy.rule.client_cert", "needs scheme = \"https\"".into()));
            }
        }
        let wires = [
            self.header.is_some(),
            self.basic.is_some(),
            self.query.is_some(),
        ];
        let wire = match (&self.secret, wires.iter().filter(|w| **w).count()) {
            (_, n) if n > 1 => {
                return Err((
                    "proxy.rule",
                    "set at most one of header, basic, query".into(),
                ))
            }
            (None, 1) => {
                return Err((
                    "proxy.rule.secret",
                    "header, basic and query need `secret`".into(),
                ))
            }
            (Some(_), 0) => {
                return Err((
                    "proxy.rule",
                    "`secret` needs one of header, basic, query".into(),
                ))
            }
            (None, _) => Wire::None,
            (Some(_), _) => {
                if let Some(h) = self.header {
                    let (name, template) = h.split_once(':').ok_or((
                        "proxy.rule.header",
                        "expected \"Name: template\", e.g. \"Authorization: Bearer {value}\""
                            .into(),
                    ))?;
                    let name =
                        http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                            (
                                "proxy.rule.header",
                                format!("`{}` is not a header name", name.trim()),
                            )
                        })?;
                    let template = template.trim().to_string();
                    if !template.contains("{value}")
                        || http::HeaderValue::from_str(&template).is_err()
                    {
                        return Err((
                            "proxy.rule.header",
                            "the template must contain {value} and be a valid header value".into(),
                        ));
                    }
                    Wire::Header { name, template }
                } else if let Some([user, pass]) = self.basic {
                    Wire::Basic { user, pass }
                } else if let Some(q) = self.query {
                    if q.is_empty()
                        || !q
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                    {
                        return Err((
                            "proxy.rule.query",
                            format!("`{}` is not a plain parameter name", q.escape_debug()),
                        ));
                    }
                    Wire::Query(q)
                } else {
                    Wire::None
                }
            }
        };
        let mut methods = Vec::new();
        for m in &self.methods {
            methods.push(
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| ("proxy.rule.methods", format!("`{m}` is not a method")))?,
            );
        }
        if let Some(p) = &self.path_prefix {
            if !p.starts_with('/') {
                return Err(("proxy.rule.path_prefix", "must begin with /".into()));
            }
        }
        Ok(Rule {
            name: self.name,
            host: self.host.to_ascii_lowercase(),
            port: self.port.unwrap_or(if tls { 443 } else { 80 }),
            tls,
            path_prefix: self.path_prefix,
            methods,
            secret: self.secret,
            wire,
            placeholders: self.placeholders,
            client_cert: self.client_cert,
            zone: self.zone.or(zone).unwrap_or(Zone::Internal),
            addresses: self.addresses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ProxyConfig, Err> {
        let raw: RawProxy = toml::from_str(t).unwrap();
        raw.validate(&|n| (n == "tools/a").then_some(Zone::External))
    }

    #[test]
    fn rules_validate_table() {
        let ok = parse("listen = \"127.0.0.1:3128\"\n[[rule]]\nname = \"a\"\nhost = \"API.example\"\nsecret = \"tools/a\"\nheader = \"Authorization: Bearer {value}\"\n").unwrap();
        assert_eq!(ok.rules[0].port, 443);
        assert_eq!(ok.rules[0].host, "api.example");
        assert_eq!(ok.rules[0].zone, Zone::External);
        for (bad, key) in [
            ("listen = \"0.0.0.0:3128\"", "proxy.listen"),
            ("listen = \"127.0.0.1:1\"\nunmatched = \"x\"", "proxy.unmatched"),
            ("listen = \"127.0.0.1:1\"\n[[rule]]\nname=\"a\"\nhost=\"h\"\nsecret=\"nope\"\nquery=\"k\"", "proxy.rule.secret"),
            ("listen = \"127.0.0.1:1\"\n[[rule]]\nname=\"a\"\nhost=\"h\"\nsecret=\"tools/a\"\nheader=\"Authorization: x\"", "proxy.rule.header"),
            ("listen = \"127.0.0.1:1\"\n[[rule]]\nname=\"a\"\nhost=\"h\"\nsecret=\"tools/a\"", "proxy.rule"),
            ("listen = \"127.0.0.1:1\"\n[[rule]]\nname=\"a\"\nhost=\"h/x\"", "proxy.rule.host"),
            ("listen = \"127.0.0.1:1\"\negress_proxy = \"nope\"", "proxy.egress_proxy"),
        ] {
            assert_eq!(parse(bad).unwrap_err().0, key, "{bad}");
        }
    }
}
