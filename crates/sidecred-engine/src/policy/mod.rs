//! Caller identity → what it may obtain. Rules match uid, gid and executable; they grant
//! secret-name globs, zones and admin actions. Denials name the rule that failed.

mod glob;

pub use glob::glob_match;
pub use sidecred_core::dns;
pub use sidecred_core::san::SanPolicy;

use crate::backend::SecretSpec;
use serde::Deserialize;
use sidecred_core::identity::PeerIdentity;
use sidecred_core::spec::{ConfigError, Locator, Zone};
use std::collections::BTreeMap;
use std::net::IpAddr;
use toml::Spanned;

/// A uid in a rule: a number, a user name, `"self"` (sidecred's own uid) or `"*"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UidSpec {
    Num(u32),
    Name(String),
}

/// Admin actions; `"*"` grants all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RevokeSession,
    Rotate,
    ListSessions,
    Status,
    GetCrl,
    GetProxyBundle,
    #[serde(rename = "*")]
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    uids: Vec<UidSpec>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    exe: Option<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    zones: Option<Vec<Zone>>,
    #[serde(default)]
    actions: Vec<Action>,
    /// SPIFFE ID this caller's certificates carry (used by the CA).
    #[serde(default)]
    spiffe_id: Option<String>,
    /// DNS names (patterns such as `*.svc.local`, `*` within one label) this caller's
    /// certificates may carry.
    #[serde(default)]
    dns_sans: Vec<String>,
    /// Wildcard names (`*.svc.local`) a certificate may carry as such, matched exactly.
    #[serde(default)]
    wildcard_dns_sans: Vec<String>,
    /// IP addresses this caller's certificates may carry.
    #[serde(default)]
    ip_sans: Vec<String>,
}

/// Who a rule matches.
#[derive(Clone, Debug)]
enum UidMatch {
    Any,
    Set(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    uids: UidMatch,
    gids: Vec<u32>,
    exe: Option<String>,
    secrets: Vec<String>,
    zones: Option<Vec<Zone>>,
    actions: Vec<Action>,
    pub spiffe_id: Option<String>,
    pub sans: SanPolicy,
}

impl Rule {
    /// Whether the rule's uid and gid part admits a caller (its exe is not looked at).
    fn admits(&self, uid: u32, gid: u32) -> bool {
        let uid_ok = match &self.uids {
            UidMatch::Any => true,
            UidMatch::Set(u) => u.contains(&uid),
        };
        uid_ok && (self.gids.is_empty() || self.gids.contains(&gid))
    }

    fn matches(&self, id: &PeerIdentity) -> bool {
        let exe_ok = match (&self.exe, &id.exe) {
            (None, _) => true,
            (Some(pat), Some(exe)) => glob_match(pat, &exe.to_string_lossy()),
            (Some(_), None) => false,
        };
        exe_ok && self.admits(id.uid, id.gid)
    }

    /// Whether this rule names an executable: then a session it admits belongs to one process.
    pub fn binds_exe(&self) -> bool {
        self.exe.is_some()
    }

    fn grants_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|g| glob_match(g, name))
    }

    fn grants_zone(&self, zone: Zone) -> bool {
        self.zones.as_ref().is_none_or(|z| z.contains(&zone))
    }

    fn grants_action(&self, a: Action) -> bool {
        self.actions.iter().any(|x| *x == a || *x == Action::All)
    }
}

/// An ordered rule set for one socket.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    section: String,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn build(
        raw: Vec<RawRule>,
        section: &str,
        secrets: &BTreeMap<String, SecretSpec>,
        loc: &Locator,
    ) -> Result<Policy, ConfigError> {
        let mut rules = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("{section}[{i}]");
            let span = r.name.span();
            let name = r.name.into_inner();
            if name.is_empty() {
                return Err(loc.at(span, format!("{key}.name"), "must not be empty"));
            }
            if rules.iter().any(|x: &Rule| x.name == name) {
                return Err(loc.at(
                    span,
                    format!("{key}.name"),
                    format!("duplicate rule name `{name}`"),
                ));
            }
            if r.uids.is_empty() && r.gids.is_empty() && r.exe.is_none() {
                return Err(loc.at(
                    span,
                    key.clone(),
                    "a rule must match on uids, gids or exe (use uids = [\"*\"] to match every caller)",
                ));
            }
            let mut set = Vec::new();
            let mut any = false;
            for u in r.uids {
                match u {
                    UidSpec::Num(n) => set.push(n),
                    UidSpec::Name(s) if s == "*" => any = true,
                    UidSpec::Name(s) if s == "self" => set.push(nix::unistd::getuid().as_raw()),
                    UidSpec::Name(s) => match nix::unistd::User::from_name(&s) {
                        Ok(Some(u)) => set.push(u.uid.as_raw()),
                        _ => {
                            return Err(loc.at(
                                span,
                                format!("{key}.uids"),
                                format!("unknown user `{s}`"),
                            ))
                        }
                    },
                }
            }
            // Any uid can run a given executable (or one at the same path in its own mount
            // namespace): an exe glob only narrows down callers already known by uid or gid.
            if r.exe.is_some() && (any || set.is_empty()) && r.gids.is_empty() {
                return Err(loc.at(
                    span,
                    format!("{key}.exe"),
                    format!(
                        "rule `{name}` matches on exe but admits every uid: exe is not an \
                         identity across uids; add uids (or gids) naming who may run it"
                    ),
                ));
            }
            if let Some(id) = &r.spiffe_id {
                if let Err(e) = spiffe::SpiffeId::new(id) {
                    return Err(loc.at(
                        span,
                        format!("{key}.spiffe_id"),
                        format!("`{id}` is not a SPIFFE ID (spiffe://TRUST_DOMAIN/PATH): {e}"),
                    ));
                }
            }
            let mut ips = Vec::new();
            for ip in &r.ip_sans {
                ips.push(ip.parse::<IpAddr>().map_err(|_| {
                    loc.at(
                        span.clone(),
                        format!("{key}.ip_sans"),
                        format!("`{ip}` is not an IP address"),
                    )
                })?);
            }
            for p in &r.dns_sans {
                dns::check_pattern(p).map_err(|e| {
                    loc.at(
                        span.clone(),
                        format!("{key}.dns_sans"),
                        format!("`{p}` is not a DNS name pattern: {e}"),
                    )
                })?;
            }
            for w in &r.wildcard_dns_sans {
                dns::check_wildcard(w).map_err(|e| {
                    loc.at(
                        span.clone(),
                        format!("{key}.wildcard_dns_sans"),
                        format!("`{w}` is not a wildcard DNS name: {e}"),
                    )
                })?;
            }
            for g in &r.secrets {
                if !secrets.keys().any(|s| glob_match(g, s)) {
                    tracing::warn!(rule = %name, glob = %g, "policy glob matches no configured secret");
                }
            }
            rules.push(Rule {
                name,
                // No uids but gids: the gids decide.
                uids: if any || set.is_empty() {
                    UidMatch::Any
                } else {
                    UidMatch::Set(set)
                },
                gids: r.gids,
                exe: r.exe,
                secrets: r.secrets,
                zones: r.zones,
                actions: r.actions,
                spiffe_id: r.spiffe_id,
                sans: SanPolicy {
                    dns: r.dns_sans,
                    wildcards: r.wildcard_dns_sans,
                    ips,
                },
            });
        }
        Ok(Policy {
            section: section.to_string(),
            rules,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule admits this uid and gid, whatever its executable: a connection
    /// from anyone else is closed at accept.
    pub fn admits_uid(&self, uid: u32, gid: u32) -> bool {
        self.rules.iter().any(|r| r.admits(uid, gid))
    }

    fn matching<'a, 'b>(
        &'a self,
        id: &'b PeerIdentity,
    ) -> impl Iterator<Item = &'a Rule> + use<'a, 'b> {
        self.rules.iter().filter(move |r| r.matches(id))
    }

    fn no_match(&self, id: &PeerIdentity) -> String {
        format!("no {} rule matches caller {}", self.section, id)
    }

    /// The first rule that matches the caller at all (sessions need no particular grant).
    pub fn caller_rule(&self, id: &PeerIdentity) -> Result<&Rule, String> {
        self.matching(id).next().ok_or_else(|| self.no_match(id))
    }

    /// The first rule matching the caller that assigns a SPIFFE ID: who the caller is to the CA.
    pub fn spiffe_rule(&self, id: &PeerIdentity) -> Result<&Rule, String> {
        let mut matched = self.matching(id).peekable();
        if matched.peek().is_none() {
            return Err(self.no_match(id));
        }
        matched.find(|r| r.spiffe_id.is_some()).ok_or_else(|| {
            format!(
                "no {} rule matching caller {id} sets a spiffe_id",
                self.section
            )
        })
    }

    /// The rule that lets `id` obtain `secret`, or why none does.
    pub fn check_secret(&self, id: &PeerIdentity, secret: &SecretSpec) -> Result<&Rule, String> {
        // The hot path: the first matching rule that grants it, with no allocation.
        if let Some(r) = self
            .matching(id)
            .find(|r| r.grants_secret(&secret.name) && r.grants_zone(secret.zone))
        {
            return Ok(r);
        }
        let matched: Vec<&Rule> = self.matching(id).collect();
        if matched.is_empty() {
            return Err(self.no_match(id));
        }
        let r = matched[0];
        if r.grants_secret(&secret.name) {
            Err(format!(
                "rule `{}` does not grant zone `{}` of secret `{}`",
                r.name,
                secret.zone.as_str(),
                secret.name
            ))
        } else {
            let names: Vec<&str> = matched.iter().map(|r| r.name.as_str()).collect();
            Err(format!(
                "rule `{}` does not grant secret `{}`",
                names.join("`, `"),
                secret.name
            ))
        }
    }

    /// The rule that lets `id` perform an admin action (optionally on a secret).
    pub fn check_action(
        &self,
        id: &PeerIdentity,
        action: Action,
        secret: Option<&str>,
    ) -> Result<&Rule, String> {
        let matched: Vec<&Rule> = self.matching(id).collect();
        if matched.is_empty() {
            return Err(self.no_match(id));
        }
        let ok = matched.iter().find(|r| {
            r.grants_action(action)
                && secret.is_none_or(|s| r.secrets.is_empty() || r.grants_secret(s))
        });
        ok.copied().ok_or_else(|| {
            let names: Vec<&str> = matched.iter().map(|r| r.name.as_str()).collect();
            match secret {
                Some(s) => format!(
                    "rule `{}` does not grant {:?} on secret `{s}`",
                    names.join("`, `"),
                    action
                ),
                None => format!("rule `{}` does not grant {:?}", names.join("`, `"), action),
            }
        })
    }
}
