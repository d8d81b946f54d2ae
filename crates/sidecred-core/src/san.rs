//! Which DNS names and IP addresses a caller's certificates may carry: decided by its policy
//! rule, enforced by the certificate issuer.

use crate::dns;
use std::net::IpAddr;

/// The DNS and IP SANs a rule allows in certificates; URIs come only from `spiffe_id`.
#[derive(Clone, Debug, Default)]
pub struct SanPolicy {
    pub dns: Vec<String>,
    /// Wildcard names allowed as such; a `dns` pattern never admits one.
    pub wildcards: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl SanPolicy {
    /// A wildcard name only if listed in `wildcards`; any other name only if it is a valid
    /// host name that a `dns` pattern matches label by label.
    pub fn allows_dns(&self, name: &str) -> bool {
        if name.starts_with("*.") {
            return dns::check_wildcard(name).is_ok()
                && self.wildcards.iter().any(|w| w.eq_ignore_ascii_case(name));
        }
        self.dns.iter().any(|p| dns::pattern_match(p, name))
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }
}
