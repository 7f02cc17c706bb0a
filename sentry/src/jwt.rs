//! Bootstrap tokens for VM deployments: compact JWS tokens (ES256 or EdDSA)
//! that name one workload and expire.
//!
//! The operator holds a signing key; sentry holds only the public JWK set.
//! `skiff-sentry token` mints a token per app id, which the sidecar presents
//! (`DAPR_SENTRY_TOKEN_FILE`) when it asks for a certificate. A token is
//! accepted when its signature verifies against a key in the set, it has not
//! expired, its audience is this trust domain, and its subject is exactly the
//! SPIFFE ID being requested.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::SpiffeId;
use crate::keyalg::KeyAlg;

/// Clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(60);
const ISSUER: &str = "skiff-sentry";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a compact JWS (header.payload.signature)")]
    Format,
    #[error("the token's {0} is not valid base64url JSON")]
    Decode(&'static str),
    #[error("the token uses algorithm {0:?}; ES256 and EdDSA are accepted")]
    Alg(String),
    #[error("no key in the JWK set verifies the token's signature")]
    Signature,
    #[error("the token expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("the token is not valid before {0} (unix seconds)")]
    NotYetValid(u64),
    #[error("the token is for audience {found:?}, not {expected:?}")]
    Audience { expected: String, found: String },
    #[error("the token is for {found}, but the request is for {requested}")]
    Subject { requested: String, found: String },
    #[error("signing key: {0}")]
    Key(String),
    #[error("JWK set: {0}")]
    Jwks(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: Audience,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    exp: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// The operator's key for minting tokens.
pub struct SigningKey {
    pair: Pair,
    kid: String,
}

impl SigningKey {
    /// A new key and its PKCS#8 PEM for the operator to keep.
    pub fn generate(alg: KeyAlg) -> Result<(Self, String), JwtError> {
        let rng = SystemRandom::new();
        let doc = match alg {
            KeyAlg::EcdsaP256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            KeyAlg::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|e| JwtError::Key(e.to_string()))?;
        let pem = crate::pem::encode("PRIVATE KEY", doc.as_ref());
        Ok((Self::from_pkcs8(doc.as_ref())?, pem))
    }

    /// Loads a PKCS#8 PEM key (ECDSA P-256 or Ed25519).
    pub fn from_pem(pem: &[u8]) -> Result<Self, JwtError> {
        match crate::pem::private_key(pem, "signing key")
            .map_err(|e| JwtError::Key(e.to_string()))?
        {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8(k.secret_pkcs8_der()),
            _ => Err(JwtError::Key(
                "the key must be PKCS#8 (BEGIN PRIVATE KEY)".into(),
            )),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let pair = match EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &rng,
        ) {
            Ok(k) => Pair::Ecdsa(k),
            Err(_) => Pair::Ed(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| {
                    JwtError::Key("neither an ECDSA P-256 nor an Ed25519 key".into())
                })?,
            ),
        };
        let public = match &pair {
            Pair::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Pair::Ed(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(Self {
            kid: key_id(&public),
            pair,
        })
    }

    /// The public JWK set sentry verifies with.
    pub fn jwks_json(&self) -> String {
        let jwk = match &self.pair {
            Pair::Ecdsa(k) => {
                let p = k.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                    "kid": self.kid, "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            Pair::Ed(k) => serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                "use": "sig", "kid": self.kid, "x": B64.encode(k.public_key().as_ref())}),
        };
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    /// A token for `id`, for `audience` (the trust domain), valid `ttl` from now.
    pub fn mint(&self, id: &SpiffeId, audience: &str, ttl: Duration) -> Result<String, JwtError> {
        let now = unix(SystemTime::now());
        let alg = match self.pair {
            Pair::Ecdsa(_) => "ES256",
            Pair::Ed(_) => "EdDSA",
        };
        let header = Header {
            alg: alg.into(),
            kid: Some(self.kid.clone()),
            typ: Some("JWT".into()),
        };
        let claims = Claims {
            sub: id.to_string(),
            aud: Audience::One(audience.to_owned()),
            iss: Some(ISSUER.into()),
            iat: Some(now),
            nbf: Some(now),
            exp: now + ttl.as_secs().max(1),
        };
        let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
        let sig = match &self.pair {
            Pair::Ecdsa(k) => k
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .map_err(|e| JwtError::Key(e.to_string()))?
                .as_ref()
                .to_vec(),
            Pair::Ed(k) => k.sign(signing_input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{signing_input}.{}", B64.encode(sig)))
    }
}

fn b64_json<T: Serialize>(v: &T) -> Result<String, JwtError> {
    serde_json::to_vec(v)
        .map(|j| B64.encode(j))
        .map_err(|e| JwtError::Key(e.to_string()))
}

struct Jwk {
    kid: Option<String>,
    ecdsa: bool,
    public: Vec<u8>,
}

/// The public keys tokens are checked against.
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl Jwks {
    pub fn from_json(json: &[u8]) -> Result<Self, JwtError> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| JwtError::Jwks(e.to_string()))?;
        let b64 = |v: &Option<String>, what: &str| {
            v.as_deref()
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(|| {
                    JwtError::Jwks(format!("a key's {what} is missing or not base64url"))
                })
        };
        let mut keys = Vec::new();
        for k in &raw.keys {
            match (k.kty.as_str(), k.crv.as_deref()) {
                ("EC", Some("P-256")) => {
                    let (x, y) = (b64(&k.x, "x")?, b64(&k.y, "y")?);
                    if x.len() != 32 || y.len() != 32 {
                        return Err(JwtError::Jwks(
                            "a P-256 key's x and y must be 32 bytes".into(),
                        ));
                    }
                    let mut public = vec![4u8];
                    public.extend_from_slice(&x);
                    public.extend_from_slice(&y);
                    keys.push(Jwk {
                        kid: k.kid.clone(),
                        ecdsa: true,
                        public,
                    });
                }
                ("OKP", Some("Ed25519")) => keys.push(Jwk {
                    kid: k.kid.clone(),
                    ecdsa: false,
                    public: b64(&k.x, "x")?,
                }),
                (kty, crv) => {
                    return Err(JwtError::Jwks(format!(
                        "unsupported key type {kty} {crv:?}: use EC P-256 or OKP Ed25519"
                    )));
                }
            }
        }
        if keys.is_empty() {
            return Err(JwtError::Jwks("the set has no keys".into()));
        }
        Ok(Self { keys })
    }

    /// Checks `token` for `requested` and `audience` at `now`.
    pub fn verify(
        &self,
        token: &str,
        requested: &SpiffeId,
        audience: &str,
        now: SystemTime,
    ) -> Result<(), JwtError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Format);
        };
        let header: Header = decode_json(h).ok_or(JwtError::Decode("header"))?;
        let ecdsa = match header.alg.as_str() {
            "ES256" => true,
            "EdDSA" => false,
            other => return Err(JwtError::Alg(other.to_owned())),
        };
        let sig = B64.decode(s).map_err(|_| JwtError::Decode("signature"))?;
        let input = &token.trim()[..h.len() + 1 + p.len()];
        let verified = self
            .keys
            .iter()
            .filter(|k| k.ecdsa == ecdsa)
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .any(|k| {
                let alg: &dyn signature::VerificationAlgorithm = if k.ecdsa {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ED25519
                };
                signature::UnparsedPublicKey::new(alg, &k.public)
                    .verify(input.as_bytes(), &sig)
                    .is_ok()
            });
        if !verified {
            return Err(JwtError::Signature);
        }
        let claims: Claims = decode_json(p).ok_or(JwtError::Decode("payload"))?;
        let now = unix(now);
        if claims.exp + LEEWAY.as_secs() <= now {
            return Err(JwtError::Expired(claims.exp));
        }
        if let Some(nbf) = claims.nbf
            && nbf > now + LEEWAY.as_secs()
        {
            return Err(JwtError::NotYetValid(nbf));
        }
        let auds = match &claims.aud {
            Audience::One(a) => std::slice::from_ref(a),
            Audience::Many(v) => v.as_slice(),
        };
        if !auds.iter().any(|a| a == audience) {
            return Err(JwtError::Audience {
                expected: audience.to_owned(),
                found: auds.join(","),
            });
        }
        let want = requested.to_string();
        if claims.sub != want {
            return Err(JwtError::Subject {
                requested: want,
                found: claims.sub,
            });
        }
        Ok(())
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

fn key_id(public: &[u8]) -> String {
    B64.encode(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..12])
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("public", "default", app).expect("id")
    }

    #[test]
    fn fresh_tokens_pass_for_both_key_types() {
        for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
            let (key, pem) = SigningKey::generate(alg).expect("key");
            let key2 = SigningKey::from_pem(pem.as_bytes()).expect("reload");
            let jwks = Jwks::from_json(key.jwks_json().as_bytes()).expect("jwks");
            let t = key2
                .mint(&id("a"), "public", Duration::from_secs(600))
                .expect("mint");
            jwks.verify(&t, &id("a"), "public", SystemTime::now())
                .expect("valid");
        }
    }

    #[test]
    fn refuses_expired_foreign_and_forged_tokens() {
        let (key, _) = SigningKey::generate(KeyAlg::EcdsaP256).expect("key");
        let jwks = Jwks::from_json(key.jwks_json().as_bytes()).expect("jwks");
        let t = key
            .mint(&id("a"), "public", Duration::from_secs(60))
            .expect("mint");
        let later = SystemTime::now() + Duration::from_secs(60) + LEEWAY + Duration::from_secs(1);
        assert!(matches!(
            jwks.verify(&t, &id("a"), "public", later),
            Err(JwtError::Expired(_))
        ));
        assert!(matches!(
            jwks.verify(&t, &id("b"), "public", SystemTime::now()),
            Err(JwtError::Subject { .. })
        ));
        assert!(matches!(
            jwks.verify(&t, &id("a"), "other-domain", SystemTime::now()),
            Err(JwtError::Audience { .. })
        ));
        // Signed by a key the operator never registered.
        let (stranger, _) = SigningKey::generate(KeyAlg::EcdsaP256).expect("key");
        let forged = stranger
            .mint(&id("a"), "public", Duration::from_secs(60))
            .expect("mint");
        assert!(matches!(
            jwks.verify(&forged, &id("a"), "public", SystemTime::now()),
            Err(JwtError::Signature)
        ));
        // A payload swapped under a valid signature.
        let other = key
            .mint(&id("b"), "public", Duration::from_secs(60))
            .expect("mint");
        let mut p: Vec<&str> = t.split('.').collect();
        let q: Vec<&str> = other.split('.').collect();
        p[1] = q[1];
        assert!(matches!(
            jwks.verify(&p.join("."), &id("b"), "public", SystemTime::now()),
            Err(JwtError::Signature)
        ));
        assert!(matches!(
            jwks.verify("abc", &id("a"), "public", SystemTime::now()),
            Err(JwtError::Format)
        ));
    }
}
