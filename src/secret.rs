//! Secret value types (the `sidecred-secret` crate): zeroized on drop, redacted in Debug, never
//! Display or Serialize. The server locks their pages in RAM (`harden::install_page_locker`).

pub use sidecred_secret::{SecretBytes, SecretText};
