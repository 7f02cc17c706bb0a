//! mTLS between sidecars: rustls configurations whose verifiers speak SPIFFE.
//!
//! Workload certificates carry a SPIFFE ID as their only URI SAN and no DNS
//! names, so the stock hostname verification does not apply. Both sides
//! verify the chain to the trust anchors (with the right EKU) and that the
//! peer's SPIFFE ID is in our trust domain, during the handshake. Which
//! *app* the server must be is checked by the dialer right after the
//! handshake and before any request is written ([`peer_id`]), because one
//! client config serves every destination. TLS 1.3 only, ALPN `h2`, no
//! session resumption: a pooled connection pays one full handshake, and a
//! resumed session could outlive the identity it was made with.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};

use crate::SpiffeId;
use crate::pem::{self, PemError};

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{what}: not a usable trust anchor: {why}")]
    Anchor { what: String, why: String },
    #[error("the certificate has no SPIFFE ID: {0}")]
    NoSpiffeId(String),
    #[error("the certificate is for {found}, expected {expected}")]
    WrongIdentity { expected: String, found: String },
    #[error("the certificate chain does not verify: {0}")]
    Chain(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider, built once.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The roots peers' chains must lead to (ca.crt, `DAPR_TRUST_ANCHORS`).
#[derive(Clone, Debug)]
pub struct Anchors {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    pem: Arc<str>,
}

impl Anchors {
    /// Parses PEM anchors; `what` names the source for errors.
    pub fn from_pem(pem_bytes: &[u8], what: &str) -> Result<Self, TlsError> {
        let certs = pem::certs(pem_bytes, what)?;
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::Anchor {
                        what: what.to_owned(),
                        why: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors: Arc::new(anchors),
            pem: String::from_utf8_lossy(pem_bytes).into(),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// A workload's certificate chain and key, with what it says about itself.
#[derive(Clone, Debug)]
pub struct Workload {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Workload {
    /// Reads the leaf's SPIFFE ID and validity.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Chain("empty chain".into()))?;
        let id = peer_id(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        Ok(Self {
            id,
            chain,
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }

    /// Checks the chain against `anchors` for both uses and that it is `expected`'s.
    pub fn verify(&self, anchors: &Anchors, expected: &SpiffeId) -> Result<(), TlsError> {
        if &self.id != expected {
            return Err(TlsError::WrongIdentity {
                expected: expected.to_string(),
                found: self.id.to_string(),
            });
        }
        let now = UnixTime::now();
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            verify_chain(&self.chain[0], &self.chain[1..], anchors, now, usage)
                .map_err(|e| TlsError::Chain(e.to_string()))?;
        }
        Ok(())
    }
}

/// The server side between sidecars: requires a client certificate from
/// our trust domain.
pub fn server_config(
    w: &Workload,
    anchors: &Anchors,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = Arc::new(SpiffeVerifier::new(anchors, w.id.trust_domain()));
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(w.chain.clone(), w.key.clone_key())?;
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

/// The dialing side between sidecars: presents `w` and accepts servers in
/// `w`'s trust domain (the dialer then checks which app it reached).
pub fn client_config(
    w: &Workload,
    anchors: &Anchors,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_trusting(w, anchors, w.id.trust_domain())
}

/// Like [`client_config`], accepting servers in `trust_domain`.
pub fn client_config_trusting(
    w: &Workload,
    anchors: &Anchors,
    trust_domain: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier::new(anchors, trust_domain)))
        .with_client_auth_cert(w.chain.clone(), w.key.clone_key())?;
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// A client without a certificate, for a sidecar asking sentry for its
/// first one: the server must chain to `anchors` in `trust_domain`.
pub fn anonymous_client_config(
    anchors: &Anchors,
    trust_domain: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier::new(anchors, trust_domain)))
        .with_no_client_auth();
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// A server that does not ask for client certificates (sentry's endpoint:
/// callers prove themselves with tokens).
pub fn open_server_config(w: &Workload) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(w.chain.clone(), w.key.clone_key())?;
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// The SPIFFE ID in a certificate: its one `spiffe://` URI SAN.
pub fn peer_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::NoSpiffeId(format!("unparsable certificate: {e}")))?;
    let san = x
        .subject_alternative_name()
        .map_err(|e| TlsError::NoSpiffeId(e.to_string()))?
        .ok_or_else(|| TlsError::NoSpiffeId("no subject alternative names".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(u), None) => u
            .parse()
            .map_err(|e: crate::IdError| TlsError::NoSpiffeId(e.to_string())),
        (None, _) => Err(TlsError::NoSpiffeId("no URI SAN".into())),
        (Some(_), Some(_)) => Err(TlsError::NoSpiffeId("more than one URI SAN".into())),
    }
}

fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::Chain(format!("unparsable certificate: {e}")))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    Ok((
        at(x.validity().not_before.timestamp()),
        at(x.validity().not_after.timestamp()),
    ))
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &Anchors,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// Chain to the anchors, then a SPIFFE ID in the trust domain.
#[derive(Debug)]
struct SpiffeVerifier {
    anchors: Anchors,
    trust_domain: String,
}

impl SpiffeVerifier {
    fn new(anchors: &Anchors, trust_domain: &str) -> Self {
        Self {
            anchors: anchors.clone(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        verify_chain(leaf, intermediates, &self.anchors, now, usage).map_err(pki_error)?;
        let id = peer_id(leaf).map_err(|e| other(e.to_string()))?;
        if id.trust_domain() != self.trust_domain {
            return Err(other(format!(
                "peer {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        Ok(())
    }
}

fn other(msg: String) -> rustls::Error {
    #[derive(Debug)]
    struct Msg(String);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Msg(
        msg,
    )))))
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        e => return other(e.to_string()),
    })
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
