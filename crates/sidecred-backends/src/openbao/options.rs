//! A secret's OpenBao options, compiled at config load: which engine serves it, the mount and
//! full API path, namespace, retirement, and the certificate request of a PKI secret.

use super::OpenBaoConfig;
use crate::options::{OptionError, RawOptions, SecretField, SecretShape};
use serde::Deserialize;
use sidecred_core::spec::Scope;
use toml::Spanned;

/// Which OpenBao engine serves a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Kv2,
    Dynamic,
    Pki,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnRetire {
    Keep,
    Delete,
}

/// The certificate a PKI secret asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiRequest {
    pub common_name: String,
    pub alt_names: Option<String>,
    /// As written (checked to be a duration); OpenBao parses it itself.
    pub ttl: Option<String>,
}

/// A secret's OpenBao settings, from its `options`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    pub kind: Kind,
    /// Full API path for dynamic and PKI secrets; the secret path under the mount for KV.
    pub path: String,
    pub mount: String,
    pub namespace: Option<String>,
    pub delete_on_retire: bool,
    /// Set exactly when `kind` is `Pki`.
    pub pki: Option<PkiRequest>,
}

/// `options` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of openbao options")]
struct RawOpts {
    #[serde(default)]
    engine: Kind,
    #[serde(default)]
    mount: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    on_retire: Option<Spanned<OnRetire>>,
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    alt_names: Option<String>,
    #[serde(default)]
    cert_ttl: Option<Spanned<String>>,
}

impl OpenBaoConfig {
    /// Compiles one secret's options.
    pub fn prepare(
        &self,
        secret: &SecretShape<'_>,
        raw: RawOptions<'_>,
    ) -> Result<Opts, OptionError> {
        let table = raw.span();
        let r: RawOpts = raw.decode()?;
        let kind = r.engine;
        let delete_on_retire = match &r.on_retire {
            Some(o) if *o.get_ref() == OnRetire::Delete => {
                if kind != Kind::Kv2 {
                    return Err(OptionError::value(
                        "on_retire",
                        Some(o.span()),
                        "applies to kv2 secrets only",
                    ));
                }
                true
            }
            _ => false,
        };
        let mount = r.mount.map(|m| m.trim_matches('/').to_string());
        let path = secret.path.trim_matches('/').to_string();
        let (path, mount) = match (kind, mount) {
            (Kind::Kv2, m) => (path, m.unwrap_or_else(|| "secret".into())),
            (_, Some(m)) => (format!("{m}/{path}"), m),
            (_, None) => (
                path.clone(),
                path.split('/').next().unwrap_or("").to_string(),
            ),
        };
        let pki = match kind {
            Kind::Pki => Some(pki_request(
                &path,
                table,
                r.common_name,
                r.alt_names,
                r.cert_ttl,
            )?),
            _ => None,
        };
        if kind != Kind::Kv2 && !self.session_tokens && secret.scope != Scope::Shared {
            return Err(OptionError::secret(
                SecretField::Scope,
                "session-scoped OpenBao secrets need session_tokens = true",
            ));
        }
        Ok(Opts {
            kind,
            path,
            mount,
            namespace: r.namespace,
            delete_on_retire,
            pki,
        })
    }
}

fn pki_request(
    path: &str,
    table: Option<std::ops::Range<usize>>,
    common_name: Option<String>,
    alt_names: Option<String>,
    cert_ttl: Option<Spanned<String>>,
) -> Result<PkiRequest, OptionError> {
    if !path.contains("/issue/") {
        return Err(OptionError::secret(
            SecretField::Path,
            format!("pki path `{path}` must look like MOUNT/issue/ROLE"),
        ));
    }
    let common_name = common_name.ok_or_else(|| {
        OptionError::value(
            "common_name",
            table,
            "required for pki secrets (engine = \"pki\")",
        )
    })?;
    let ttl = match cert_ttl {
        None => None,
        Some(t) => {
            sidecred_core::duration::parse_duration(t.get_ref())
                .map_err(|e| OptionError::value("cert_ttl", Some(t.span()), e.to_string()))?;
            Some(t.into_inner())
        }
    };
    Ok(PkiRequest {
        common_name,
        alt_names,
        ttl,
    })
}
