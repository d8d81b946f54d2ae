//! Scheduled rotation. Each secret with `rotate_every` or `rotate_cron` rotates once per slot,
//! however many sidecars serve it: with `[scheduler] lock_backend` set, the sidecars meet at one
//! KV v2 record per secret (`lock_mount`/`lock_prefix`/SECRET) written with check-and-set.
//!
//! The first sidecar to write a claim for a slot rotates; the others see the claim and wait
//! for the record to say `done`, then take over the result (new version, previous version and
//! when it retires) so they serve `previous` during grace and retire it after, as the rotating
//! sidecar does. A claim that is not completed within `claim_ttl` (its holder crashed) may be
//! taken over by another sidecar, as long as the slot has not passed.

use super::Origin;
use crate::backend::SecretSpec;
use crate::backend::{Backend, BackendError};
use crate::clock::{from_millis, unix_millis};
use crate::engine::Engine;
use crate::schedule::Schedule;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often a sidecar re-reads a slot another sidecar has claimed.
const POLL: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(in crate::engine) enum SlotState {
    Claimed,
    Done,
}

/// The lock and rotation record of one secret (its latest slot). Versions and times only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::engine) struct SlotRecord {
    pub slot_ms: u64,
    pub holder: String,
    pub state: SlotState,
    pub claimed_until_ms: u64,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub previous: String,
    #[serde(default)]
    pub retires_at_ms: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(in crate::engine) enum Decision {
    /// Write a claim with this check-and-set version.
    Claim { cas: u64 },
    /// Another sidecar holds a live claim: read again shortly.
    Wait,
    /// Another sidecar rotated this slot: take over its result.
    Apply,
    /// Nothing to do (this sidecar rotated it, or the record is already past this slot).
    Skip,
}

/// Pure: what to do about `slot_ms` given the record found (`version` 0: none).
pub(in crate::engine) fn decide(
    rec: Option<&SlotRecord>,
    version: u64,
    slot_ms: u64,
    me: &str,
    now_ms: u64,
) -> Decision {
    let Some(r) = rec else {
        return Decision::Claim { cas: version };
    };
    if r.slot_ms < slot_ms {
        return Decision::Claim { cas: version };
    }
    if r.slot_ms > slot_ms {
        return Decision::Skip;
    }
    match r.state {
        SlotState::Done if r.holder == me => Decision::Skip,
        SlotState::Done => Decision::Apply,
        SlotState::Claimed if r.holder == me => Decision::Skip,
        SlotState::Claimed if now_ms < r.claimed_until_ms => Decision::Wait,
        SlotState::Claimed => Decision::Claim { cas: version },
    }
}

/// Next slot per scheduled secret, and which slots are being worked on.
#[derive(Default)]
pub(in crate::engine) struct Scheduler {
    next: Mutex<HashMap<String, (Schedule, Option<SystemTime>)>>,
    running: Mutex<HashSet<String>>,
}

impl Scheduler {
    /// Pure bookkeeping: the slot of `name` that is due at `now`, if any (and not running).
    /// A secret seen for the first time starts at the next boundary: starting a sidecar never
    /// rotates by itself.
    fn due(&self, name: &str, s: &Schedule, now: SystemTime) -> Option<SystemTime> {
        let mut next = self.next.lock();
        let e = next
            .entry(name.to_string())
            .or_insert_with(|| (s.clone(), s.next_after(now)));
        if e.0 != *s {
            *e = (s.clone(), s.next_after(now));
        }
        let slot = e.1.filter(|t| now >= *t)?;
        self.running.lock().insert(name.to_string()).then_some(slot)
    }

    fn finish(&self, name: &str, s: &Schedule, slot: SystemTime, now: SystemTime) {
        if let Some(e) = self.next.lock().get_mut(name) {
            e.1 = s.next_after(slot.max(now));
        }
        self.running.lock().remove(name);
    }
}

impl Engine {
    /// Starts the slot work that is due; never waits for it. Called from the housekeeping tick.
    /// The handles let [`Engine::tick`] await the slots it started.
    pub(in crate::engine) fn spawn_scheduled(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let cat = self.catalog();
        let now = self.now();
        let mut started = Vec::new();
        for spec in cat.config.secrets.values() {
            let Some(s) = &spec.schedule else { continue };
            let Some(slot) = self.rotation.scheduler.due(&spec.name, s, now) else {
                continue;
            };
            let (engine, spec, s) = (self.clone(), spec.clone(), s.clone());
            started.push(tokio::spawn(async move {
                engine.run_slot(&spec, &s, slot).await;
                engine
                    .rotation
                    .scheduler
                    .finish(&spec.name, &s, slot, engine.now());
            }));
        }
        started
    }

    async fn run_slot(&self, spec: &SecretSpec, s: &Schedule, slot: SystemTime) {
        let slot_ms = unix_millis(slot);
        let cat = self.catalog();
        let sched = cat.config.scheduler.clone();
        let Some(lock) = sched.lock_backend.clone() else {
            if let Err(e) = self
                .rotate_as(Origin::Schedule(slot_ms), &spec.name, None, None)
                .await
            {
                tracing::warn!(secret = %spec.name, error = %e, "scheduled rotation failed");
            }
            return;
        };
        let Some(backend) = cat.backends.get(&lock).cloned() else {
            return;
        };
        let Some(store) = backend.records() else {
            tracing::error!(backend = %lock, "lock backend cannot hold records");
            return;
        };
        let path = format!("{}/{}", sched.lock_prefix.trim_matches('/'), spec.name);
        let mount = sched.lock_mount.as_str();
        // The slot is given up when the next one begins.
        let end = s
            .next_after(slot)
            .unwrap_or(slot + Duration::from_secs(3600));
        while self.now() < end {
            let found = self.bounded(&lock, store.read_record(mount, &path)).await;
            let (rec, version) = match found {
                Ok(Some((v, n))) => (serde_json::from_value::<SlotRecord>(v).ok(), n),
                Ok(None) => (None, 0),
                Err(e) => {
                    tracing::warn!(secret = %spec.name, error = %e, "cannot read the rotation lock; retrying");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let me = self.rotation.instance.as_str();
            let now_ms = unix_millis(self.now());
            match decide(rec.as_ref(), version, slot_ms, me, now_ms) {
                Decision::Skip => return,
                Decision::Wait => tokio::time::sleep(POLL).await,
                Decision::Apply => {
                    let r = rec.expect("Apply comes with a record");
                    self.apply_remote(spec, &r.version, &r.previous, from_millis(r.retires_at_ms))
                        .await;
                    return;
                }
                Decision::Claim { cas } => {
                    let claim = SlotRecord {
                        slot_ms,
                        holder: me.to_string(),
                        state: SlotState::Claimed,
                        claimed_until_ms: now_ms + sched.claim_ttl.0.as_millis() as u64,
                        version: String::new(),
                        previous: String::new(),
                        retires_at_ms: 0,
                    };
                    let body = serde_json::to_value(&claim).unwrap_or_default();
                    match self
                        .bounded(&lock, store.write_record(mount, &path, body, cas))
                        .await
                    {
                        Ok(v) => {
                            self.rotate_claimed(spec, claim, &lock, mount, &path, v)
                                .await;
                            return;
                        }
                        // Another sidecar wrote first: read what it wrote.
                        Err(BackendError::Precondition(_)) => {}
                        Err(e) => {
                            tracing::warn!(secret = %spec.name, error = %e, "cannot claim the rotation slot; retrying");
                            tokio::time::sleep(POLL).await;
                        }
                    }
                }
            }
        }
        tracing::warn!(secret = %spec.name, slot = slot_ms, "rotation slot passed without a completed rotation");
    }

    /// Rotates a slot this sidecar claimed and records the result for the others.
    async fn rotate_claimed(
        &self,
        spec: &SecretSpec,
        mut rec: SlotRecord,
        lock: &str,
        mount: &str,
        path: &str,
        cas: u64,
    ) {
        let out = match self
            .rotate_as(Origin::Schedule(rec.slot_ms), &spec.name, None, None)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // The claim lapses after claim_ttl and another sidecar retries the slot.
                tracing::warn!(secret = %spec.name, error = %e, "scheduled rotation failed");
                return;
            }
        };
        rec.state = SlotState::Done;
        rec.version = out.version;
        rec.previous = out.previous_version.unwrap_or_default();
        rec.retires_at_ms = out
            .previous_retires_at
            .map(unix_millis)
            .unwrap_or_else(|| unix_millis(self.now()));
        let body = serde_json::to_value(&rec).unwrap_or_default();
        let Some(b) = self.catalog().backends.get(lock).cloned() else {
            return;
        };
        let Some(store) = b.records() else { return };
        if let Err(e) = self
            .bounded(lock, store.write_record(mount, path, body, cas))
            .await
        {
            tracing::warn!(secret = %spec.name, error = %e, "rotated, but cannot record it for the other sidecars");
        }
    }
}

impl Engine {
    /// The lock backend, mount and record path for `name`, when a lock backend is configured.
    fn lock_record(&self, name: &str) -> Option<(String, Arc<dyn Backend>, String, String)> {
        let cat = self.catalog();
        let s = &cat.config.scheduler;
        let lock = s.lock_backend.clone()?;
        let b = cat.backends.get(&lock)?.clone();
        b.records()?;
        let path = format!("{}/{}", s.lock_prefix.trim_matches('/'), name);
        Some((lock, b, s.lock_mount.clone(), path))
    }

    /// Records a rotation made here on request, so the other sidecars take over its previous
    /// version and window when they notice the new version. The slot bookkeeping is kept.
    pub(in crate::engine) async fn publish_rotation(&self, name: &str, out: &super::RotateOutcome) {
        let Some((lock, b, mount, path)) = self.lock_record(name) else {
            return;
        };
        let Some(store) = b.records() else { return };
        let (slot_ms, cas) = match self.bounded(&lock, store.read_record(&mount, &path)).await {
            Ok(Some((v, n))) => (v["slot_ms"].as_u64().unwrap_or(0), n),
            Ok(None) => (0, 0),
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "cannot publish the rotation for other sidecars");
                return;
            }
        };
        let rec = SlotRecord {
            slot_ms,
            holder: self.rotation.instance.clone(),
            state: SlotState::Done,
            claimed_until_ms: 0,
            version: out.version.clone(),
            previous: out.previous_version.clone().unwrap_or_default(),
            retires_at_ms: out.previous_retires_at.map(unix_millis).unwrap_or(0),
        };
        let body = serde_json::to_value(&rec).unwrap_or_default();
        if let Err(e) = self
            .bounded(&lock, store.write_record(&mount, &path, body, cas))
            .await
        {
            tracing::warn!(secret = %name, error = %e, "cannot publish the rotation for other sidecars");
        }
    }

    /// Called when a version change is noticed: if another sidecar published a rotation to
    /// `current`, takes it over (previous version served until the same end). True if so.
    pub(in crate::engine) async fn take_over_published(
        &self,
        spec: &SecretSpec,
        current: &str,
    ) -> bool {
        let Some((lock, b, mount, path)) = self.lock_record(&spec.name) else {
            return false;
        };
        let Some(store) = b.records() else {
            return false;
        };
        let Ok(Some((v, _))) = self.bounded(&lock, store.read_record(&mount, &path)).await else {
            return false;
        };
        let Ok(r) = serde_json::from_value::<SlotRecord>(v) else {
            return false;
        };
        if r.state != SlotState::Done || r.version != current || r.holder == self.rotation.instance
        {
            return false;
        }
        self.apply_remote(spec, &r.version, &r.previous, from_millis(r.retires_at_ms))
            .await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slot: u64, holder: &str, state: SlotState, until: u64) -> SlotRecord {
        SlotRecord {
            slot_ms: slot,
            holder: holder.into(),
            state,
            claimed_until_ms: until,
            version: "2".into(),
            previous: "1".into(),
            retires_at_ms: 0,
        }
    }

    #[test]
    fn decide_table() {
        use Decision::*;
        use SlotState::*;
        // (record, version, slot, now, decision) as seen by sidecar "me"
        let cases = [
            (None, 0, 100, 100, Claim { cas: 0 }),
            (Some(rec(40, "x", Done, 0)), 3, 100, 100, Claim { cas: 3 }),
            (
                Some(rec(40, "x", Claimed, 999)),
                3,
                100,
                100,
                Claim { cas: 3 },
            ),
            (Some(rec(100, "x", Claimed, 150)), 4, 100, 120, Wait),
            (
                Some(rec(100, "x", Claimed, 150)),
                4,
                100,
                150,
                Claim { cas: 4 },
            ),
            (Some(rec(100, "x", Done, 150)), 5, 100, 120, Apply),
            (Some(rec(100, "me", Done, 150)), 5, 100, 120, Skip),
            (Some(rec(100, "me", Claimed, 150)), 5, 100, 120, Skip),
            (Some(rec(200, "x", Claimed, 250)), 6, 100, 120, Skip),
        ];
        for (i, (r, v, slot, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(r.as_ref(), v, slot, "me", now), want, "case {i}");
        }
    }

    #[test]
    fn slots_start_at_the_next_boundary_and_run_once() {
        let t = |ms: u64| from_millis(ms);
        let s = Schedule::Every(Duration::from_secs(3));
        let sch = Scheduler::default();
        assert_eq!(sch.due("a", &s, t(4_000)), None, "first sight waits");
        assert_eq!(sch.due("a", &s, t(5_999)), None);
        assert_eq!(sch.due("a", &s, t(6_000)), Some(t(6_000)));
        assert_eq!(sch.due("a", &s, t(6_100)), None, "already running");
        sch.finish("a", &s, t(6_000), t(6_300));
        assert_eq!(sch.due("a", &s, t(8_999)), None);
        assert_eq!(sch.due("a", &s, t(9_050)), Some(t(9_000)));
        // Finishing late skips the slots that passed meanwhile.
        sch.finish("a", &s, t(9_000), t(16_000));
        assert_eq!(sch.due("a", &s, t(17_000)), None);
        assert_eq!(sch.due("a", &s, t(18_000)), Some(t(18_000)));
    }

    #[test]
    fn records_round_trip() {
        let r = rec(7, "sc-1", SlotState::Claimed, 9);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["state"], "claimed");
        assert_eq!(serde_json::from_value::<SlotRecord>(v).unwrap(), r);
    }
}
