//! In-process engines on a manual clock, for tests where time itself is what is tested.

use sidecred::api::error::ApiError;
use sidecred::api::peer::PeerIdentity;
use sidecred::audit::Audit;
use sidecred::clock::{Clock, ManualClock};
use sidecred::config::Config;
use sidecred::engine::{Catalog, Engine, GetRequest, Grant};
use sidecred::session::{Owner, Session};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The caller of every in-process request: root, with no process to re-check.
pub const ROOT: PeerIdentity = PeerIdentity {
    uid: 0,
    gid: 0,
    pid: 1,
    exe: None,
    start_time: None,
    proc_dir: None,
    reads: None,
};

/// ROOT's session identity under the policy rule `rule`.
pub fn owner(rule: &str) -> Owner {
    Owner {
        uid: 0,
        rule: rule.into(),
        process: None,
    }
}

/// The catalog of a config text (its path is never read), its backends on `clock`.
pub async fn catalog(config: &str, clock: Arc<dyn Clock>) -> Catalog {
    let cfg = Config::parse(std::path::Path::new("/t/sidecred.toml"), config, &|_| None).unwrap();
    Catalog::build(cfg, 1, clock).await.unwrap()
}

/// An engine whose clock starts at `start_secs` after the Unix epoch and moves only when told.
/// Its backends (the CA's staged activation and grace among them) keep time on that clock.
pub async fn manual_engine(config: &str, start_secs: u64) -> (Arc<Engine>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(start_secs),
    ));
    let e = Engine::new(
        catalog(config, clock.clone()).await,
        clock.clone(),
        Audit::disabled(),
    );
    (e, clock)
}

/// One read through the engine by ROOT, under policy rule `rule`, in session `s`.
/// `spiffe_id` matters only to certificate secrets.
pub async fn grant(
    e: &Engine,
    s: &Session,
    rule: &str,
    name: &str,
    version: Option<&str>,
    spiffe_id: Option<&str>,
) -> Result<Grant, ApiError> {
    let cat = e.catalog();
    let spec = cat.secret(name)?.clone();
    let o = owner(rule);
    let req = GetRequest {
        owner: &o,
        session_id: &s.meta.id,
        call_id: None,
        version,
        spiffe_id,
        sans: None,
    };
    Ok(e.get_secret(&cat, &spec, &ROOT, req).await?)
}
