//! A CA secret's options, compiled at config load: the DNS and IP SANs its certificates carry
//! besides the caller's SPIFFE ID, each checked once here.

use super::CaConfig;
use crate::options::{OptionError, RawOptions, SecretField, SecretShape};
use serde::Deserialize;
use sidecred_core::spec::Scope;
use std::net::IpAddr;

/// A CA secret's `options`: the SANs its certificates carry besides the caller's SPIFFE ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaOptions {
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
}

/// `options` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of ca options")]
struct RawCaOptions {
    #[serde(default)]
    dns_sans: Vec<toml::Spanned<String>>,
    #[serde(default)]
    ip_sans: Vec<toml::Spanned<String>>,
}

impl CaConfig {
    /// Compiles one secret's options: the SANs its certificates ask for.
    pub fn prepare(
        &self,
        secret: &SecretShape<'_>,
        raw: RawOptions<'_>,
    ) -> Result<CaOptions, OptionError> {
        let r: RawCaOptions = raw.decode()?;
        if secret.scope == Scope::Shared {
            return Err(OptionError::secret(
                SecretField::Scope,
                "a CA-backed secret holds a private key per caller: set scope = \"session\" or \"call\"",
            ));
        }
        let mut dns_sans = Vec::with_capacity(r.dns_sans.len());
        for d in r.dns_sans {
            let ok = if d.get_ref().starts_with("*.") {
                sidecred_core::dns::check_wildcard(d.get_ref())
            } else {
                sidecred_core::dns::check_name(d.get_ref())
            };
            ok.map_err(|e| {
                OptionError::value(
                    "dns_sans",
                    Some(d.span()),
                    format!("`{}` is not a DNS name: {e}", d.get_ref()),
                )
            })?;
            dns_sans.push(d.into_inner());
        }
        let ip_sans = r
            .ip_sans
            .iter()
            .map(|s| {
                s.get_ref().parse::<IpAddr>().map_err(|_| {
                    OptionError::value(
                        "ip_sans",
                        Some(s.span()),
                        format!("`{}` is not an IP address", s.get_ref()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CaOptions { dns_sans, ip_sans })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(scope: Scope, text: &str) -> Result<CaOptions, OptionError> {
        let cfg: CaConfig =
            toml::from_str("trust_domain = \"example.org\"\ngenerate = true").unwrap();
        let shape = SecretShape {
            path: "mtls",
            scope,
        };
        cfg.prepare(&shape, RawOptions::parse(text).unwrap())
    }

    #[test]
    fn prepare_table() {
        let o = prepare(
            Scope::Session,
            "{ dns_sans = [\"a.svc.local\", \"*.apps.local\"], ip_sans = [\"127.0.0.1\", \"::1\"] }",
        )
        .unwrap();
        assert_eq!(o.dns_sans, ["a.svc.local", "*.apps.local"]);
        assert_eq!(o.ip_sans.len(), 2);
        assert_eq!(prepare(Scope::Call, "{}").unwrap(), CaOptions::default());
        let cases = [
            ("{ dns_san = [] }", "unknown field `dns_san`", Some(2)),
            (
                "{ dns_sans = \"a.local\" }",
                "expected a sequence",
                Some(13),
            ),
            (
                "{ dns_sans = [\"a.local\", \"bad name\"] }",
                "option `dns_sans`: `bad name` is not a DNS name",
                Some(25),
            ),
            (
                "{ ip_sans = [\"10.0.0.300\"] }",
                "option `ip_sans`: `10.0.0.300` is not an IP address",
                Some(13),
            ),
            (
                "{ ip_sans = [1] }",
                "invalid type: integer `1`, expected a string",
                Some(13),
            ),
        ];
        for (text, want, at) in cases {
            let e = prepare(Scope::Session, text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert_eq!(e.span().map(|s| s.start), at, "{text}: {e}");
        }
        let e = prepare(Scope::Shared, "{}").unwrap_err();
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
    }
}
