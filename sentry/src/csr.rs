//! Certificate signing requests: what the CA accepts, and how a workload
//! makes one.
//!
//! The CA signs only the public key of a request; subject, extensions and
//! lifetime come from the CA. A request is refused when its signature does
//! not verify (the caller does not hold the key), when its key is not ECDSA
//! P-256 or Ed25519, or when it names a SPIFFE ID other than the one the
//! caller asked for and proved.

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair, SanType};
use rustls_pki_types::{CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::SpiffeId;
use crate::keyalg::KeyAlg;

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not a PKCS#10 request: {0}")]
    Parse(String),
    #[error("the CSR's signature does not verify against its own public key")]
    Signature,
    #[error("the CSR's key is {0}; only ECDSA P-256 and Ed25519 keys are signed")]
    KeyType(String),
    #[error("the CSR names {found}, but the request is for {requested}")]
    ForeignIdentity { requested: String, found: String },
    #[error("making a CSR: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A request that passed every check; only the CA can turn it into a leaf.
pub struct Checked {
    pub(crate) public_key: rcgen::PublicKey,
    pub(crate) alg: KeyAlg,
}

impl Checked {
    pub fn key_alg(&self) -> KeyAlg {
        self.alg
    }
}

/// Checks a PEM or DER CSR for `requested`.
pub fn check(csr: &[u8], requested: &SpiffeId) -> Result<Checked, CsrError> {
    let parsed = if csr.starts_with(b"-----BEGIN") {
        let pem = std::str::from_utf8(csr).map_err(|e| CsrError::Parse(e.to_string()))?;
        CertificateSigningRequestParams::from_pem(pem)
    } else {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
    }
    .map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
        e => CsrError::Parse(e.to_string()),
    })?;
    let alg = KeyAlg::of(parsed.public_key.algorithm())
        .ok_or_else(|| CsrError::KeyType(format!("{:?}", parsed.public_key.algorithm())))?;
    let want = requested.to_string();
    for san in &parsed.params.subject_alt_names {
        if let SanType::URI(uri) = san
            && uri.as_str() != want
        {
            return Err(CsrError::ForeignIdentity {
                requested: want,
                found: uri.as_str().to_owned(),
            });
        }
    }
    Ok(Checked {
        public_key: parsed.public_key,
        alg,
    })
}

/// A fresh key and a PEM CSR for `id`: what a sidecar sends to sentry.
pub fn generate(id: &SpiffeId, alg: KeyAlg) -> Result<(PrivateKeyDer<'static>, String), CsrError> {
    let key = KeyPair::generate_for(alg.rcgen())?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((der, csr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("public", "default", app).expect("id")
    }

    #[test]
    fn accepts_its_own_csr_with_both_key_types() {
        for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
            let (_key, csr) = generate(&id("a"), alg).expect("generate");
            let c = check(csr.as_bytes(), &id("a")).expect("check");
            assert_eq!(c.key_alg(), alg);
        }
    }

    #[test]
    fn refuses_a_foreign_spiffe_id() {
        let (_key, csr) = generate(&id("other"), KeyAlg::EcdsaP256).expect("generate");
        let err = check(csr.as_bytes(), &id("a")).err().expect("refused");
        assert!(matches!(err, CsrError::ForeignIdentity { .. }), "{err}");
        assert!(err.to_string().contains("/other"), "{err}");
    }

    #[test]
    fn refuses_a_bad_signature() {
        let (_key, csr) = generate(&id("a"), KeyAlg::EcdsaP256).expect("generate");
        let mut der = crate::pem::certs(
            csr.replace("CERTIFICATE REQUEST", "CERTIFICATE").as_bytes(),
            "csr",
        )
        .expect("der")
        .remove(0)
        .to_vec();
        // The signature is the tail of the DER: flip a bit in it.
        let n = der.len();
        der[n - 3] ^= 0x01;
        let err = check(&der, &id("a")).err().expect("refused");
        assert!(matches!(err, CsrError::Signature), "{err}");
    }

    #[test]
    fn refuses_a_wrong_key_type() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id("a").to_string().try_into().expect("uri"))];
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = check(csr.as_bytes(), &id("a")).err().expect("refused");
        assert!(matches!(err, CsrError::KeyType(_)), "{err}");
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            check(b"not a csr", &id("a")),
            Err(CsrError::Parse(_))
        ));
    }
}
