//! Catalog entries: `[[secret]]` tables checked against their backend, whose options are
//! compiled here, once, into typed values.

use super::{ConfigError, Dur, Locator, Scope, Zone};
use crate::backend::{
    BackendConfig, OptionError, RawOptions, SecretField, SecretShape, SecretSpec,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    name: Spanned<String>,
    backend: Spanned<String>,
    path: Spanned<String>,
    zone: Zone,
    #[serde(default)]
    ttl: Option<Dur>,
    #[serde(default)]
    grace: Option<Dur>,
    #[serde(default)]
    scope: Option<Spanned<Scope>>,
    /// Select one field of a JSON value.
    #[serde(default)]
    key: Option<String>,
    /// Backend-specific settings, compiled by the backend from the spanned document (see
    /// `secret_options`); only their presence is read here.
    #[serde(default)]
    options: Option<serde::de::IgnoredAny>,
    /// Scheduled rotation: a fixed interval, or a cron expression (UTC).
    #[serde(default)]
    rotate_every: Option<Dur>,
    #[serde(default)]
    rotate_cron: Option<String>,
}

/// Validates every `[[secret]]` against its backend and compiles its options.
pub(super) fn build(
    raw: Vec<RawSecret>,
    backends: &BTreeMap<String, BackendConfig>,
    loc: &Locator<'_>,
) -> Result<BTreeMap<String, SecretSpec>, ConfigError> {
    let mut secrets = BTreeMap::new();
    let mut doc = None;
    for (i, rs) in raw.into_iter().enumerate() {
        let key = |f: &str| format!("secret[{i}].{f}");
        let name = rs.name.get_ref().clone();
        crate::error::validate_name(&name).map_err(|m| loc.at(rs.name.span(), key("name"), m))?;
        if secrets.contains_key(&name) {
            return Err(loc.at(
                rs.name.span(),
                key("name"),
                format!("duplicate secret name `{name}`"),
            ));
        }
        let Some(backend) = backends.get(rs.backend.get_ref()) else {
            let known: Vec<_> = backends.keys().cloned().collect();
            return Err(loc.at(
                rs.backend.span(),
                key("backend"),
                format!(
                    "unknown backend `{}` (defined: {})",
                    rs.backend.get_ref(),
                    known.join(", ")
                ),
            ));
        };
        if rs.path.get_ref().is_empty() {
            return Err(loc.at(rs.path.span(), key("path"), "must not be empty"));
        }
        let ttl = rs.ttl.map(|d| d.0).unwrap_or(Duration::from_secs(300));
        if ttl.is_zero() {
            return Err(loc.at(rs.name.span(), key("ttl"), "must be greater than 0"));
        }
        let scope = rs.scope.as_ref().map(|s| *s.get_ref()).unwrap_or_default();
        let shape = SecretShape {
            path: rs.path.get_ref(),
            scope,
        };
        let raw_options = match rs.options {
            Some(_) => secret_options(&mut doc, i, loc)?,
            None => None,
        };
        let options = backend
            .prepare(&shape, RawOptions::new(raw_options))
            .map_err(|e| {
                // Inside `options` when it has a position there, else the field it is about.
                let (at, field) = match (e.span(), &e) {
                    (Some(at), _) => (at, "options"),
                    (None, OptionError::Secret { field, .. }) => match (field, &rs.scope) {
                        (SecretField::Scope, Some(s)) => (s.span(), field.as_str()),
                        _ => (rs.path.span(), field.as_str()),
                    },
                    (None, _) => (rs.path.span(), "options"),
                };
                loc.caused(at, key(field), e)
            })?;
        let spec = SecretSpec {
            name: name.clone(),
            backend: rs.backend.get_ref().clone(),
            path: rs.path.get_ref().clone(),
            zone: rs.zone,
            ttl,
            grace: rs.grace.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
            scope,
            key: rs.key,
            options,
            schedule: crate::schedule::from_config(
                rs.rotate_every.map(|d| d.0),
                rs.rotate_cron.as_deref(),
            )
            .map_err(|m| loc.at(rs.name.span(), key("rotate_every"), m))?,
        };
        secrets.insert(name, spec);
    }

    Ok(secrets)
}

/// The `options` of the i-th `[[secret]]`, with positions, from the document parsed once more
/// with spans kept (on the first secret that has options).
fn secret_options<'t>(
    doc: &mut Option<Spanned<DeTable<'t>>>,
    i: usize,
    loc: &Locator<'t>,
) -> Result<Option<Spanned<DeValue<'t>>>, ConfigError> {
    if doc.is_none() {
        let parsed = DeTable::parse(loc.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            loc.at(span, "", e.message().trim_end().to_string())
        })?;
        *doc = Some(parsed);
    }
    Ok(doc
        .as_ref()
        .and_then(|d| d.get_ref().get("secret"))
        .and_then(|s| s.get_ref().get(i))
        .and_then(|s| s.get_ref().get("options"))
        .cloned())
}
