//! Compact JWS verification against a JSON Web Key Set, for
//! `middleware.http.bearer`: RS256/384/512, PS256/384/512, ES256, ES384 and
//! EdDSA (Ed25519), verified with `ring`.
//!
//! Only asymmetric algorithms exist here: `alg: none` and every `HS*`
//! are refused before a key is looked at, and an `oct` key in the set is
//! never loaded, so a token signed with HMAC over the text of a public key
//! (the classic algorithm confusion) has nothing to verify against. A key
//! is used only for the algorithm family of its `kty` and curve, and only
//! for its own `alg` when the set names one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    #[error("the token is not a compact JWS (header.payload.signature)")]
    Format,
    #[error("the token's {0} is not valid base64url JSON")]
    Encoding(&'static str),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no key in the key set verifies algorithm {alg} (kid {kid:?})")]
    NoKey { alg: String, kid: Option<String> },
    #[error("the signature does not verify")]
    Signature,
    #[error("the key set is not a JWKS: {0}")]
    KeySet(String),
}

/// A signature algorithm this module verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    fn family(self) -> Family {
        match self {
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => {
                Family::Rsa
            }
            Self::Es256 => Family::P256,
            Self::Es384 => Family::P384,
            Self::EdDsa => Family::Ed25519,
        }
    }

    fn rsa_params(self) -> &'static signature::RsaParameters {
        match self {
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

#[derive(Clone, Debug)]
enum Material {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 ‖ x ‖ y).
    Ec(Family, Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Material {
    fn family(&self) -> Family {
        match self {
            Self::Rsa { .. } => Family::Rsa,
            Self::Ec(f, _) => *f,
            Self::Ed25519(_) => Family::Ed25519,
        }
    }
}

#[derive(Clone, Debug)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    material: Material,
}

/// The verification keys of a JWKS document.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS; keys this module cannot use (`oct`, encryption
    /// keys, unknown curves) are left out, not errors.
    pub fn from_json(json: &[u8]) -> Result<Self, JoseError> {
        let raw: RawSet =
            serde_json::from_slice(json).map_err(|e| JoseError::KeySet(e.to_string()))?;
        let keys = raw.keys.into_iter().filter_map(key).collect();
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key(k: RawKey) -> Option<Key> {
    if k.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let b = |s: &Option<String>| s.as_deref().and_then(|v| B64.decode(v).ok());
    let material = match (k.kty.as_str(), k.crv.as_deref()) {
        ("RSA", _) => Material::Rsa {
            n: b(&k.n)?,
            e: b(&k.e)?,
        },
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (family, len) = if crv == "P-256" {
                (Family::P256, 32)
            } else {
                (Family::P384, 48)
            };
            let (x, y) = (b(&k.x)?, b(&k.y)?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Ec(family, point)
        }
        ("OKP", Some("Ed25519")) => Material::Ed25519(b(&k.x)?),
        _ => return None,
    };
    Some(Key {
        kid: k.kid,
        alg: k.alg,
        material,
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A token's header fields that choose its key.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    signed: &'t str,
    signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

/// Splits and decodes a compact JWS; the algorithm must be one of ours.
pub fn parse(token: &str) -> Result<Parsed<'_>, JoseError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::Format);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JoseError::Encoding("header"))?;
    let alg = Alg::parse(&header.alg).ok_or_else(|| JoseError::Algorithm(header.alg.clone()))?;
    let claims: Map<String, Value> = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JoseError::Encoding("payload"))?;
    let signature = B64
        .decode(s)
        .map_err(|_| JoseError::Encoding("signature"))?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signed: &token[..h.len() + 1 + p.len()],
        signature,
        claims,
    })
}

impl Parsed<'_> {
    /// Whether the set has a key this token could be checked with (its
    /// `kid`, when it names one).
    pub fn key_known(&self, set: &KeySet) -> bool {
        self.candidates(set).next().is_some()
    }

    fn candidates<'s>(&'s self, set: &'s KeySet) -> impl Iterator<Item = &'s Key> + 's {
        let family = self.alg.family();
        set.keys.iter().filter(move |k| {
            k.material.family() == family
                && self
                    .kid
                    .as_ref()
                    .is_none_or(|kid| k.kid.as_ref() == Some(kid))
                && k.alg
                    .as_deref()
                    .is_none_or(|a| Alg::parse(a) == Some(self.alg))
        })
    }

    /// Verifies the signature with the keys that fit the token.
    pub fn verify(&self, set: &KeySet) -> Result<(), JoseError> {
        let mut tried = false;
        for k in self.candidates(set) {
            tried = true;
            if self.verify_with(&k.material).is_ok() {
                return Ok(());
            }
        }
        if tried {
            Err(JoseError::Signature)
        } else {
            Err(JoseError::NoKey {
                alg: format!("{:?}", self.alg),
                kid: self.kid.clone(),
            })
        }
    }

    fn verify_with(&self, m: &Material) -> Result<(), ring::error::Unspecified> {
        let msg = self.signed.as_bytes();
        match m {
            Material::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(self.alg.rsa_params(), msg, &self.signature)
            }
            Material::Ec(f, point) => {
                let alg: &dyn VerificationAlgorithm = if *f == Family::P256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                UnparsedPublicKey::new(alg, point).verify(msg, &self.signature)
            }
            Material::Ed25519(x) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, &self.signature)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testkeys {
    //! Keys and tokens for tests, made with `ring`.
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    pub struct EcKey {
        pair: EcdsaKeyPair,
        pub kid: String,
    }

    impl EcKey {
        pub fn new(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("keygen");
            let pair = EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_ref(),
                &rng,
            )
            .expect("key");
            Self {
                pair,
                kid: kid.into(),
            }
        }

        pub fn jwk(&self) -> Value {
            let p = self.pair.public_key().as_ref();
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
        }

        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            let signed = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), signed.as_bytes())
                .expect("sign");
            format!("{signed}.{}", B64.encode(sig.as_ref()))
        }

        pub fn token(&self, claims: &Value) -> String {
            self.sign(
                &serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
                claims,
            )
        }
    }

    pub fn ed25519() -> (Ed25519KeyPair, Value) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed",
            "x": B64.encode(pair.public_key().as_ref())});
        (pair, jwk)
    }

    pub fn set(keys: &[Value]) -> KeySet {
        KeySet::from_json(serde_json::json!({ "keys": keys }).to_string().as_bytes()).expect("jwks")
    }

    /// A token signed with HMAC-SHA256 over `secret`.
    pub fn hs256(secret: &[u8], claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            B64.encode(claims.to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::testkeys::*;
    use super::*;
    use serde_json::json;

    /// An RSA-2048 key for tests only (ring verifies RSA but cannot make
    /// keys): its public half as a JWK and an RS256 token it signed over
    /// `{"sub":"rsa"}`, made once with `openssl` and `ring`.
    const RSA_JWK: &str = include_str!("testdata/rsa-jwk.json");
    const RSA_TOKEN: &str = include_str!("testdata/rsa-token.txt");

    #[test]
    fn es256_and_eddsa_tokens_verify_with_their_keys() {
        let k = EcKey::new("k1");
        let set = set(&[k.jwk()]);
        let t = k.token(&json!({"sub": "x"}));
        let p = parse(&t).expect("parsed");
        assert_eq!(p.claims["sub"], "x");
        p.verify(&set).expect("verifies");

        let (pair, jwk) = ed25519();
        let signed = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"EdDSA","kid":"ed"}"#),
            B64.encode("{}")
        );
        let t = format!(
            "{signed}.{}",
            B64.encode(pair.sign(signed.as_bytes()).as_ref())
        );
        parse(&t)
            .expect("parsed")
            .verify(&super::testkeys::set(&[jwk]))
            .expect("verifies");
    }

    #[test]
    fn rs256_verifies_with_the_modulus_and_exponent() {
        let jwk: Value = serde_json::from_str(RSA_JWK).expect("jwk");
        let set = set(&[jwk]);
        let p = parse(RSA_TOKEN.trim()).expect("parsed");
        assert_eq!(p.alg, Alg::Rs256);
        p.verify(&set).expect("verifies");
        // The same bytes claimed as PS256 are not a PSS signature.
        let t = RSA_TOKEN.trim();
        let (h, rest) = t.split_once('.').expect("dots");
        let _ = h;
        let forged = format!("{}.{rest}", B64.encode(r#"{"alg":"PS256","kid":"rsa"}"#));
        assert_eq!(
            parse(&forged).expect("parsed").verify(&set),
            Err(JoseError::Signature)
        );
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key() {
        let k = EcKey::new("k1");
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(r#"{"sub":"x"}"#)
        );
        assert_eq!(
            parse(&none).err(),
            Some(JoseError::Algorithm("none".into()))
        );
        // HMAC keyed with the public key's own JWK text: still refused.
        let t = hs256(k.jwk().to_string().as_bytes(), &json!({"sub": "x"}));
        assert_eq!(parse(&t).err(), Some(JoseError::Algorithm("HS256".into())));
        // An oct key in the set is never loaded.
        let s = super::testkeys::set(&[json!({"kty": "oct", "k": "c2VjcmV0"})]);
        assert!(s.is_empty());
    }

    #[test]
    fn wrong_keys_kids_and_shapes_fail() {
        let (a, b) = (EcKey::new("a"), EcKey::new("b"));
        let only_b = set(&[b.jwk()]);
        let t = a.token(&json!({}));
        assert!(matches!(
            parse(&t).expect("parsed").verify(&only_b),
            Err(JoseError::NoKey { .. })
        ));
        // b's key under a's kid: the signature does not verify.
        let mut forged = b.jwk();
        forged["kid"] = json!("a");
        assert_eq!(
            parse(&t).expect("parsed").verify(&set(&[forged])),
            Err(JoseError::Signature)
        );
        // A key limited to another algorithm is not used.
        let mut limited = a.jwk();
        limited["alg"] = json!("ES384");
        assert!(!parse(&t).expect("parsed").key_known(&set(&[limited])));
        // An encryption key is not a verification key.
        let mut enc = a.jwk();
        enc["use"] = json!("enc");
        assert!(set(&[enc]).is_empty());
        for bad in ["a.b", "a.b.c.d", "!!.e30.", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let mut sig = t.clone();
        sig.push('A');
        assert!(
            parse(&sig)
                .and_then(|p| p.verify(&set(&[a.jwk()])))
                .is_err()
        );
    }
}
