//! When things happen in the CA: leaf renewal, and which CA signs and which are trusted while a
//! rotation is under way. Pure: every function takes `now`.

use std::time::{Duration, SystemTime};

/// When to re-issue a leaf valid over `[issued, not_after)`: at about half its life, earlier by
/// up to a tenth of it (`r` in [0, 1)) so a fleet does not renew in lockstep.
pub fn leaf_renew_at(issued: SystemTime, not_after: SystemTime, r: f64) -> SystemTime {
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life.mul_f64((0.5 - 0.1 * r.clamp(0.0, 1.0)).max(0.1))
}

/// A leaf's notAfter: `ttl` from now, never past the issuer's own notAfter.
pub fn leaf_not_after(now: SystemTime, ttl: Duration, issuer_not_after: SystemTime) -> SystemTime {
    (now + ttl).min(issuer_not_after)
}

/// One CA generation's place in a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    /// When it entered the trust bundle.
    pub added_at: SystemTime,
    /// When it starts signing: after every bundle holder has had time to learn it.
    pub activates_at: SystemTime,
    /// Out of the bundle (its grace window closed).
    pub retired: bool,
}

/// The CA that signs at `now`: the newest active one still trusted. When none is active yet
/// (its predecessor was retired early), the oldest trusted one signs.
pub fn signer(slots: &[Slot], now: SystemTime) -> Option<u64> {
    let live = slots.iter().filter(|s| !s.retired);
    live.clone()
        .filter(|s| s.activates_at <= now)
        .max_by_key(|s| (s.activates_at, s.id))
        .or_else(|| live.min_by_key(|s| s.id))
        .map(|s| s.id)
}

/// The CAs in the trust bundle at `now`, oldest first.
pub fn trusted(slots: &[Slot]) -> Vec<u64> {
    slots.iter().filter(|s| !s.retired).map(|s| s.id).collect()
}

/// The next moment the signer changes on its own (a staged CA activating), if any.
pub fn next_activation(slots: &[Slot], now: SystemTime) -> Option<SystemTime> {
    slots
        .iter()
        .filter(|s| !s.retired && s.activates_at > now)
        .map(|s| s.activates_at)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn slot(id: u64, added: u64, active: u64, retired: bool) -> Slot {
        Slot {
            id,
            added_at: t(added),
            activates_at: t(active),
            retired,
        }
    }

    #[test]
    fn leaf_renewal_table() {
        // (issued, not_after, r, want secs after issue)
        let cases = [
            (0, 900, 0.0, 450.0),
            (0, 900, 0.5, 405.0),
            (0, 900, 0.999, 360.1),
            (100, 106, 0.0, 3.0),
            (0, 0, 0.3, 0.0),
        ];
        for (i, na, r, want) in cases {
            let got = leaf_renew_at(t(i), t(na), r)
                .duration_since(t(i))
                .unwrap()
                .as_secs_f64();
            assert!((got - want).abs() < 0.2, "{i} {na} {r}: {got}");
        }
    }

    #[test]
    fn leaf_clamped_to_issuer() {
        let cases = [
            (0, 900, 10_000, 900),
            (0, 900, 600, 600),
            (500, 900, 600, 600),
        ];
        for (now, ttl, issuer, want) in cases {
            assert_eq!(
                leaf_not_after(t(now), Duration::from_secs(ttl), t(issuer)),
                t(want)
            );
        }
    }

    #[test]
    fn rotation_steps_table() {
        // CA 1 since 0; CA 2 staged at 100, signing from 110; CA 1 retired at 160.
        let staged = vec![slot(1, 0, 0, false), slot(2, 100, 110, false)];
        let done = vec![slot(1, 0, 0, true), slot(2, 100, 110, false)];
        // (slots, now, signer, trusted, next activation)
        type Case<'a> = (&'a [Slot], u64, u64, Vec<u64>, Option<u64>);
        let cases: Vec<Case> = vec![
            (&staged[..1], 50, 1, vec![1], None),
            (&staged, 100, 1, vec![1, 2], Some(110)),
            (&staged, 109, 1, vec![1, 2], Some(110)),
            (&staged, 110, 2, vec![1, 2], None),
            (&done, 160, 2, vec![2], None),
        ];
        for (slots, now, want_signer, want_trusted, next) in cases {
            assert_eq!(signer(slots, t(now)), Some(want_signer), "at {now}");
            assert_eq!(trusted(slots), want_trusted, "at {now}");
            assert_eq!(next_activation(slots, t(now)), next.map(t), "at {now}");
        }
    }

    #[test]
    fn early_retirement_promotes_the_staged_ca() {
        let slots = vec![slot(1, 0, 0, true), slot(2, 100, 200, false)];
        assert_eq!(signer(&slots, t(150)), Some(2));
        assert_eq!(signer(&[], t(0)), None);
    }
}
