//! The key algorithms Skiff's identities use (the CA's own, the
//! workloads' and the bootstrap tokens'): one small type that the CA, the
//! CSR checks and the JWT code all name, so none of them imports another
//! for it.

use rcgen::SignatureAlgorithm;

/// Key algorithms the CA creates and signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlg {
    #[default]
    EcdsaP256,
    Ed25519,
}

impl KeyAlg {
    pub fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    pub fn of(alg: &SignatureAlgorithm) -> Option<Self> {
        [KeyAlg::EcdsaP256, KeyAlg::Ed25519]
            .into_iter()
            .find(|k| k.rcgen() == alg)
    }
}

impl std::str::FromStr for KeyAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa" | "ecdsa-p256" | "p256" => Ok(KeyAlg::EcdsaP256),
            "ed25519" => Ok(KeyAlg::Ed25519),
            _ => Err(format!(
                "{s:?}: key algorithm must be ecdsa-p256 or ed25519"
            )),
        }
    }
}
