//! The watcher: one GET of the revocation log per poll interval. A new log version is one
//! revocation; a sidecar that fell a few versions behind reads the missed versions, and one
//! further behind (or new) re-reads the tombstone list with a single LIST.
//!
//! Load per idle sidecar: 1 / poll_interval requests/s (4/s at 250 ms), whatever the fleet size.

/// What to read after seeing the log at `current`, having applied everything up to `seen`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// Apply the entry just read.
    Latest,
    /// Read versions `from..current` one by one, then apply the entry just read.
    Range(u64, u64),
    /// List every tombstone (start, a large gap, or a log that was recreated).
    Resync,
}

/// At most this many missed versions are read one by one.
pub const MAX_GAP: u64 = 32;

pub fn plan(seen: Option<u64>, current: u64) -> Plan {
    match seen {
        None => Plan::Resync,
        Some(s) if current < s => Plan::Resync,
        Some(s) if current == s => Plan::Nothing,
        Some(s) if current == s + 1 => Plan::Latest,
        Some(s) if current - s <= MAX_GAP => Plan::Range(s + 1, current),
        Some(_) => Plan::Resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_table() {
        let cases = [
            (None, 0, Plan::Resync),
            (None, 7, Plan::Resync),
            (Some(0), 0, Plan::Nothing),
            (Some(5), 5, Plan::Nothing),
            (Some(0), 1, Plan::Latest),
            (Some(5), 6, Plan::Latest),
            (Some(5), 8, Plan::Range(6, 8)),
            (Some(5), 5 + MAX_GAP, Plan::Range(6, 5 + MAX_GAP)),
            (Some(5), 6 + MAX_GAP, Plan::Resync),
            (Some(9), 2, Plan::Resync),
        ];
        for (seen, cur, want) in cases {
            assert_eq!(plan(seen, cur), want, "{seen:?} {cur}");
        }
    }
}
