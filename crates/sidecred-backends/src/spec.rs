//! A catalog entry as the engine and the backends see it: built by the config layer, with the
//! backend's options already compiled, so nothing below the config ever reads TOML.

use super::CompiledOptions;
use sidecred_core::schedule::Schedule;
use sidecred_core::spec::{Scope, Zone};
use std::time::Duration;

/// One catalog entry: where a named secret comes from and how it is leased.
#[derive(Clone, Debug)]
pub struct SecretSpec {
    pub name: String,
    pub backend: String,
    pub path: String,
    pub zone: Zone,
    pub ttl: Duration,
    pub grace: Duration,
    pub scope: Scope,
    pub key: Option<String>,
    /// Backend options, compiled at load: backends never see TOML.
    pub options: CompiledOptions,
    pub schedule: Option<Schedule>,
}
