//! The audit log's HMAC key. Session, lease and call ids and label values are bearer-like
//! handles: a reader of the audit file must be able to correlate lines and look one id up
//! (`sidecred audit hash VALUE`), but not to lift a live id out of the file and use it.

use aws_lc_rs::hmac;
use sidecred_secret::SecretBytes;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of every hashed identifier, so a reader knows what the field holds.
pub const PREFIX: &str = "hmac-sha256:";
const KEY_LEN: usize = 32;

/// An HMAC-SHA256 key, kept in zeroized memory.
pub struct AuditKey {
    key: hmac::Key,
    // The raw bytes stay only in zeroizing storage; the aws-lc key holds its own copy.
    _raw: SecretBytes,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    fn from_bytes(raw: SecretBytes) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw.expose()),
            _raw: raw,
        }
    }

    /// `hmac-sha256:<hex>` of `value`.
    pub fn hash(&self, value: &str) -> String {
        let tag = hmac::sign(&self.key, value.as_bytes());
        // Hex without a `format!` per byte: this runs for every id of every audited request.
        let tag = tag.as_ref();
        let n = tag.len().min(32);
        let mut hex = [0u8; 64];
        let _ = hex::encode_to_slice(&tag[..n], &mut hex[..2 * n]);
        let mut out = String::with_capacity(PREFIX.len() + 64);
        out.push_str(PREFIX);
        out.push_str(std::str::from_utf8(&hex[..2 * n]).unwrap_or_default());
        out
    }

    /// Reads the key at `path`, creating it (random, mode 0600, never overwritten) when absent.
    /// An existing key that group or other may access, or that another uid owns, is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .map_err(|e| format!("audit hmac key directory `{}`: {e}", dir.display()))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                let mut raw = vec![0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut raw)
                    .map_err(|_| "cannot draw random bytes for the audit key".to_string())?;
                let raw = SecretBytes::new(raw);
                f.write_all(raw.expose())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("audit hmac key `{}`: {e}", path.display()))?;
                Ok(Self::from_bytes(raw))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(format!("audit hmac key `{}`: {e}", path.display())),
        }
    }

    /// Reads an existing key (for `sidecred audit hash`), with the same ownership checks.
    pub fn load(path: &Path) -> Result<Self, String> {
        let err = |e: std::io::Error| format!("audit hmac key `{}`: {e}", path.display());
        let mut f = std::fs::File::open(path).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "audit hmac key `{}` has mode {mode:04o}: group or world access is refused (chmod 600)",
                path.display()
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(format!(
                "audit hmac key `{}` is owned by uid {}, not by this process's uid {me}",
                path.display(),
                meta.uid()
            ));
        }
        let mut raw = Vec::with_capacity(KEY_LEN + 1);
        Read::by_ref(&mut f)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(err)?;
        let raw = SecretBytes::new(raw);
        if raw.len() < 16 {
            return Err(format!(
                "audit hmac key `{}` is {} bytes; at least 16 are needed",
                path.display(),
                raw.len()
            ));
        }
        Ok(Self::from_bytes(raw))
    }
}

/// Where the key lives: `audit.hmac_key_file`, else `server.state_dir`, else next to the log.
pub fn default_path(
    audit_path: &Path,
    state_dir: Option<&Path>,
    configured: Option<&Path>,
) -> PathBuf {
    match (configured, state_dir) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(d)) => d.join("audit-hmac.key"),
        (None, None) => {
            let mut s = audit_path.as_os_str().to_owned();
            s.push(".hmac-key");
            PathBuf::from(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = AuditKey::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = AuditKey::load_or_create(&p).unwrap();
        assert_eq!(
            a.hash("ses_1"),
            b.hash("ses_1"),
            "the key is reused, not replaced"
        );
        assert_ne!(a.hash("ses_1"), a.hash("ses_2"));
        assert!(a.hash("x").starts_with(PREFIX) && a.hash("x").len() == PREFIX.len() + 64);
        assert_eq!(format!("{a:?}"), "AuditKey(..)");
    }

    #[test]
    fn a_readable_or_short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(AuditKey::load(&p).unwrap_err().contains("mode 0640"));
        std::fs::write(&p, [7u8; 8]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AuditKey::load(&p).unwrap_err().contains("at least 16"));
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let k = AuditKey::from_bytes(SecretBytes::new(b"Jefe".to_vec()));
        assert_eq!(
            k.hash("what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
