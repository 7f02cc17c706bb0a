//! PEM in and out: certificate chains, keys and CSRs as files and wire
//! fields carry them.

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{what}: no PEM {label} block found")]
    Missing { what: String, label: &'static str },
    #[error("{what}: unreadable PEM: {why}")]
    Bad { what: String, why: String },
}

/// Every `CERTIFICATE` block in `pem`, in order. `what` names the source
/// (a file, a response field) for the error.
pub fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Bad {
            what: what.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::Missing {
            what: what.to_owned(),
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::Missing {
            what: what.to_owned(),
            label: "PRIVATE KEY",
        },
        e => PemError::Bad {
            what: what.to_owned(),
            why: e.to_string(),
        },
    })
}

/// Encodes DER as one PEM block with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Concatenated `CERTIFICATE` blocks.
pub fn encode_chain(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| encode("CERTIFICATE", c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let der = CertificateDer::from(vec![0x30u8, 0x03, 0x02, 0x01, 0x01]);
        let pem = encode_chain(&[der.clone(), der.clone()]);
        let back = certs(pem.as_bytes(), "t").expect("parse");
        assert_eq!(back, vec![der.clone(), der]);
        assert!(matches!(
            certs(b"nothing", "f"),
            Err(PemError::Missing { .. })
        ));
        let err = private_key(b"", "key.pem").expect_err("empty");
        assert!(err.to_string().starts_with("key.pem: "), "{err}");
    }
}
