//! Permission checks for files that hold credentials or records of their use. One check for
//! every such file (CA key, OpenBao token, AppRole secret id, JWT), so they cannot drift apart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a credential file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FileModeError {
    #[error("{setting} `{}`: {source}", .path.display())]
    Stat {
        setting: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{setting} `{}` has mode {mode:04o}: group or world access to {what} is refused (chmod 600)",
        .path.display()
    )]
    Open {
        setting: String,
        path: PathBuf,
        mode: u32,
        what: &'static str,
    },
}

/// Refuses a file that anyone but its owner may read or write. `setting` names the config key
/// (`key_file`, `auth.path`, ...), `what` the kind of secret, for the error message.
pub fn check_private(path: &Path, setting: &str, what: &'static str) -> Result<(), FileModeError> {
    let meta = std::fs::metadata(path).map_err(|source| FileModeError::Stat {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileModeError::Open {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            mode,
            what,
        });
    }
    Ok(())
}

/// Makes an append-only record file owner-only. A regular file that is group or world readable
/// (created by an older version under the umask) is narrowed to 0600, with a warning, rather than
/// refused: its content names callers, never values, and refusing it would stop the server.
pub fn make_private(file: &std::fs::File, path: &Path) -> std::io::Result<()> {
    let meta = file.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:04o}", meta.permissions().mode() & 0o777),
            "group or world could read this file; narrowed to 0600"
        );
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
