//! Debug for the wire messages that carry values: every field but the value.

use crate::v1 as pb;
use std::fmt;

impl fmt::Debug for pb::GetSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetSecretResponse")
            .field("name", &self.name)
            .field(
                "value",
                &format_args!("[REDACTED; {} bytes]", self.value.len()),
            )
            .field("version", &self.version)
            .field("lease_id", &self.lease_id)
            .field("expires_at", &self.expires_at)
            .field("zone", &self.zone)
            .field("previous", &self.previous)
            .field("stale", &self.stale)
            .finish()
    }
}

impl fmt::Debug for pb::SecretVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretVersion")
            .field(
                "value",
                &format_args!("[REDACTED; {} bytes]", self.value.len()),
            )
            .field("version", &self.version)
            .finish()
    }
}

impl fmt::Debug for pb::RotateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateRequest")
            .field("name", &self.name)
            .field("grace_seconds", &self.grace_seconds)
            .field(
                "value",
                &format_args!("[REDACTED; {} bytes]", self.value.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1 as pb;

    #[test]
    fn wire_messages_redact_values() {
        let r = pb::GetSecretResponse {
            value: b"canary-wire".to_vec(),
            previous: Some(pb::SecretVersion {
                value: b"canary-prev".to_vec(),
                version: "1".into(),
            }),
            ..Default::default()
        };
        let shown = format!(
            "{r:?} {:?}",
            pb::RotateRequest {
                value: b"canary-rot".to_vec(),
                ..Default::default()
            }
        );
        assert!(!shown.contains("canary"), "{shown}");
    }
}
