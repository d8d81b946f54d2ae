//! JWT-SVIDs: ES256 tokens signed with a P-256 key held only in memory, the JWKS that verifies
//! them, and validation with audience and expiry checks.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime};

/// Largest token accepted for validation.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The signing key (JWS by the `jsonwebtoken` crate on aws-lc-rs); the private half lives only
/// in the encoding key, the public half in the JWKS and the decoding key.
pub struct JwtKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Uncompressed public point (0x04 || x || y), for the JWKS.
    public: Vec<u8>,
    pub kid: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({})", self.kid)
    }
}

/// Why a key could not be made, a token minted, or a token is refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("JWT key generation failed")]
    Generate(#[source] aws_lc_rs::error::Unspecified),
    #[error("JWT key generation failed: {0}")]
    Rejected(#[source] aws_lc_rs::error::KeyRejected),
    #[error("JWT key generation failed: unexpected public key")]
    PublicKey,
    #[error("JWT key: {0}")]
    DecodingKey(#[source] jsonwebtoken::errors::Error),
    #[error("JWT signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("token too large")]
    TooLarge,
    #[error("not a valid JWS compact serialization: {0}")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    #[error("unsupported alg (only ES256)")]
    Algorithm,
    #[error("unknown key id")]
    KeyId,
    #[error("audience does not match")]
    Audience,
    #[error("signature does not verify")]
    Signature,
    #[error("token refused: {0}")]
    Refused(#[source] jsonwebtoken::errors::Error),
    #[error("claims: no exp")]
    NoExpiry,
    #[error("token has expired")]
    Expired,
    #[error("claims: sub is not a SPIFFE ID")]
    Subject,
}

/// Claims of a token that passed validation.
#[derive(Debug)]
pub struct Validated {
    pub spiffe_id: String,
    pub claims: Map<String, Value>,
}

impl JwtKey {
    pub fn generate() -> Result<Self, JwtError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(JwtError::Generate)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(JwtError::Rejected)?;
        let public = pair.public_key().as_ref().to_vec();
        if public.len() != 65 {
            return Err(JwtError::PublicKey);
        }
        let decoding = DecodingKey::from_ec_components(
            &B64.encode(&public[1..33]),
            &B64.encode(&public[33..65]),
        )
        .map_err(JwtError::DecodingKey)?;
        Ok(Self {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding,
            public,
            kid: hex::encode(rand::random::<[u8; 12]>()),
        })
    }

    /// The JWK of this key.
    pub fn jwk(&self) -> Value {
        let p = &self.public;
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
    ) -> Result<(String, SystemTime), JwtError> {
        let exp = now + ttl;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let aud = if audience.len() == 1 {
            json!(audience[0])
        } else {
            json!(audience)
        };
        let claims = json!({
            "sub": sub,
            "aud": aud,
            "iat": sidecred_core::clock::unix_secs(now),
            "exp": sidecred_core::clock::unix_secs(exp),
            "jti": hex::encode(rand::random::<[u8; 12]>()),
        });
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(JwtError::Sign)?;
        Ok((token, exp))
    }

    /// Checks signature, algorithm (ES256 only), key id, audience, expiry (against `now`, so
    /// time stays injected) and that the subject is a SPIFFE ID.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Validated, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(JwtError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(JwtError::Algorithm);
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(JwtError::KeyId);
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.validate_exp = false;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => JwtError::Audience,
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::Signature,
                    _ => JwtError::Refused(e),
                }
            })?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(JwtError::NoExpiry)?;
        if exp <= sidecred_core::clock::unix_secs(now) {
            return Err(JwtError::Expired);
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| spiffe::SpiffeId::new(s).is_ok())
            .ok_or(JwtError::Subject)?
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
            ("a.b.c.d", "svc-b", 0, "compact"),
        ];
        for (t, a, off, frag) in cases {
            let e = k
                .validate(t, a, now + Duration::from_secs(off))
                .unwrap_err();
            assert!(e.to_string().contains(frag), "{e}");
        }
        let other = JwtKey::generate().unwrap();
        assert!(other.validate(&tok, "svc-b", now).is_err());
    }
}
