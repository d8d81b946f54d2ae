//! The deny list of revoked certificates, and the CRLs (DER and PEM) built from it: one per CA
//! generation still trusted, since only a certificate's issuer may revoke it.

use super::issuer::{pem_block, CaCert};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// How long a published CRL stays authoritative; rebuilt on every change and well before this.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub ca_id: u64,
    pub revoked_at: SystemTime,
    /// Once past, the entry is dropped: an expired certificate needs no CRL entry.
    pub not_after: SystemTime,
}

/// Serial → revocation. Pure bookkeeping; signing happens in [`build`].
#[derive(Default)]
pub struct DenyList {
    entries: BTreeMap<Vec<u8>, Revoked>,
    /// CRL number: increases with every change.
    pub number: u64,
}

impl DenyList {
    pub fn add(&mut self, serial: Vec<u8>, r: Revoked) {
        self.entries.insert(serial, r);
        self.number += 1;
    }

    pub fn contains(&self, serial: &[u8]) -> bool {
        self.entries.contains_key(serial)
    }

    /// Drops entries of certificates that have expired by `now`; returns how many.
    pub fn prune(&mut self, now: SystemTime) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, r| r.not_after > now);
        let n = before - self.entries.len();
        if n > 0 {
            self.number += 1;
        }
        n
    }

    pub fn serials_hex(&self) -> Vec<String> {
        self.entries.keys().map(hex::encode).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn for_ca(&self, ca_id: u64) -> impl Iterator<Item = (&Vec<u8>, &Revoked)> {
        self.entries.iter().filter(move |(_, r)| r.ca_id == ca_id)
    }
}

/// A signed CRL.
#[derive(Clone, Debug)]
pub struct Crl {
    pub ca_id: u64,
    pub der: Vec<u8>,
    pub pem: String,
}

/// Signs the CRL of one CA generation at `now`.
pub fn build(ca: &CaCert, list: &DenyList, now: SystemTime) -> Result<Crl, super::CaError> {
    let revoked_certs = list
        .for_ca(ca.id)
        .map(|(serial, r)| RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: OffsetDateTime::from(r.revoked_at),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: OffsetDateTime::from(now - Duration::from_secs(1)),
        next_update: OffsetDateTime::from(now + CRL_VALIDITY),
        crl_number: SerialNumber::from(list.number.max(1)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&ca.issuer)
        .map_err(super::CaError::SignCrl)?;
    let der = crl.der().to_vec();
    Ok(Crl {
        ca_id: ca.id,
        pem: pem_block("X509 CRL", &der),
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn prune_drops_only_expired_entries() {
        let mut l = DenyList::default();
        let r = |na| Revoked {
            ca_id: 1,
            revoked_at: t(0),
            not_after: t(na),
        };
        l.add(vec![1], r(100));
        l.add(vec![2], r(200));
        // (now, pruned, left)
        for (now, pruned, left) in [(50, 0, 2), (100, 1, 1), (150, 0, 1), (200, 1, 0)] {
            assert_eq!(l.prune(t(now)), pruned, "at {now}");
            assert_eq!(l.len(), left, "at {now}");
        }
    }

    #[test]
    fn crl_lists_the_serials_of_its_own_ca() {
        let now = SystemTime::now();
        let ca = super::super::issuer::generate(7, "example.org", now, Duration::from_secs(3600))
            .unwrap();
        let mut l = DenyList::default();
        let r = |ca_id| Revoked {
            ca_id,
            revoked_at: now,
            not_after: now + Duration::from_secs(60),
        };
        l.add(vec![0x41, 1], r(7));
        l.add(vec![0x41, 2], r(8));
        let crl = build(&ca, &l, now).unwrap();
        let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
        let serials: Vec<_> = parsed
            .iter_revoked_certificates()
            .map(|c| c.raw_serial().to_vec())
            .collect();
        assert_eq!(serials, vec![vec![0x41, 1]]);
        assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
    }
}
