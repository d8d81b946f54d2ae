//! JWT-SVIDs: ES256 tokens signed with a P-256 key held only in memory, the JWKS that verifies
//! them, and validation with audience and expiry checks.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime};

/// Largest token accepted for validation.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

pub struct JwtKey {
    key: EcdsaKeyPair,
    pub kid: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({})", self.kid)
    }
}

/// Claims of a token that passed validation.
#[derive(Debug)]
pub struct Validated {
    pub spiffe_id: String,
    pub claims: Map<String, Value>,
}

impl JwtKey {
    pub fn generate() -> Result<Self, String> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "JWT key generation failed".to_string())?;
        let kid = hex::encode(rand::random::<[u8; 12]>());
        Ok(Self { key, kid })
    }

    fn public(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// The JWK of this key (uncompressed point: 0x04 || x || y).
    pub fn jwk(&self) -> Value {
        let p = self.public();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(&p[1..33]),
            "y": B64.encode(&p[33..65]),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }

    /// Mints a token for `sub`, valid for `ttl` from `now`.
    pub fn mint(
        &self,
        sub: &str,
        audience: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(String, SystemTime), String> {
        let iat = crate::clock::unix_secs(now);
        let exp = now + ttl;
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let aud = if audience.len() == 1 {
            json!(audience[0])
        } else {
            json!(audience)
        };
        let claims = json!({
            "sub": sub,
            "aud": aud,
            "iat": iat,
            "exp": crate::clock::unix_secs(exp),
            "jti": hex::encode(rand::random::<[u8; 12]>()),
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| "JWT signing failed".to_string())?;
        Ok((format!("{signing_input}.{}", B64.encode(sig.as_ref())), exp))
    }

    /// Checks signature, algorithm, key id, audience, expiry and subject.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Validated, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too large".into());
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWS compact serialization".into());
        };
        let decode = |p: &str, what: &str| -> Result<Vec<u8>, String> {
            B64.decode(p).map_err(|_| format!("{what}: bad base64url"))
        };
        let header: Value = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|_| "header: not JSON".to_string())?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err("unsupported alg (only ES256)".into());
        }
        if header.get("kid").and_then(Value::as_str) != Some(self.kid.as_str()) {
            return Err("unknown key id".into());
        }
        let sig = decode(s, "signature")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.public())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "signature does not verify".to_string())?;
        let claims: Map<String, Value> = serde_json::from_slice(&decode(c, "claims")?)
            .map_err(|_| "claims: not a JSON object".to_string())?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("claims: no exp")?;
        if exp <= crate::clock::unix_secs(now) {
            return Err("token has expired".into());
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return Err("audience does not match".into());
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| s.starts_with("spiffe://"))
            .ok_or("claims: sub is not a SPIFFE ID")?
            .to_string();
        Ok(Validated {
            spiffe_id: sub,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = JwtKey::generate().unwrap();
        let now = SystemTime::now();
        let aud = vec!["svc-b".to_string()];
        let (tok, _) = k
            .mint("spiffe://example.org/a", &aud, now, Duration::from_secs(60))
            .unwrap();
        let v = k.validate(&tok, "svc-b", now).unwrap();
        assert_eq!(v.spiffe_id, "spiffe://example.org/a");
        // (token, audience, now offset, expected error fragment)
        let mut tampered = tok.clone();
        tampered.insert(tok.find('.').unwrap() + 3, 'A');
        let cases = [
            (tok.as_str(), "other", 0, "audience"),
            (tok.as_str(), "svc-b", 61, "expired"),
            (tampered.as_str(), "svc-b", 0, ""),
            ("a.b", "svc-b", 0, "compact"),
        ];
        for (t, a, off, frag) in cases {
            let e = k
                .validate(t, a, now + Duration::from_secs(off))
                .unwrap_err();
            assert!(e.contains(frag), "{e}");
        }
        let other = JwtKey::generate().unwrap();
        assert!(other.validate(&tok, "svc-b", now).is_err());
    }
}
