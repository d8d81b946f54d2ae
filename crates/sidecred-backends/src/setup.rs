//! Why a backend's settings are refused at config load, or the backend cannot start. Messages
//! name settings and files, never values; the error underneath is kept as the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting the backend refuses: which one, and why.
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
    /// A file named by a setting that is missing or unreadable.
    #[error("{setting} `{}`: {source}", .path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A dev seed file that is not TOML. Only the parser's message is kept: its error would
    /// carry the file's text, which holds secret values.
    #[error("seed_file `{}`: {message}", .path.display())]
    SeedFile { path: PathBuf, message: String },
    #[error(transparent)]
    FileMode(#[from] sidecred_core::fileperm::FileModeError),
    /// The config names a backend kind whose cargo feature this build left out.
    #[error(
        "backend kind `{kind}` is not in this build: rebuild sidecred with the cargo feature \
         `{feature}` (on by default; `--no-default-features` drops it)"
    )]
    NotBuilt {
        kind: &'static str,
        feature: &'static str,
    },
    /// The OpenBao HTTP client could not be built (address, CA bundle); `what` says which
    /// setting and how, `source` is the client library's error.
    #[cfg(feature = "openbao")]
    #[error("{what}")]
    HttpClient {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Logging in to the backend was refused (a server that cannot be reached is not an error
    /// at start; it is retried).
    #[cfg(feature = "openbao")]
    #[error("auth method `{method}`: {source}")]
    Login {
        method: &'static str,
        source: super::BackendError,
    },
    #[cfg(feature = "aws")]
    #[error("no AWS region: set `region` or AWS_REGION")]
    NoRegion,
    #[error(transparent)]
    Ca(#[from] super::ca::CaError),
}

impl SetupError {
    pub fn setting(setting: &'static str, reason: impl Into<String>) -> Self {
        SetupError::Setting {
            setting,
            reason: reason.into(),
        }
    }
}
