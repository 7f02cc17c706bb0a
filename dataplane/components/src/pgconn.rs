//! One PostgreSQL connection from a component's `connectionString`
//! (`sslmode` / `sslrootcert` read as `state.postgresql` reads them), its
//! connection task driven in the background — and its notifications
//! (`LISTEN`) handed on when asked. For drivers that need a connection of
//! their own rather than a pool: `LISTEN`, and the bindings' few calls.
//! Also the connection-string TLS settings every PostgreSQL driver reads
//! ([`split_tls`], [`tls`]), `state.postgresql`'s pool included.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::MetadataError;

/// A connection string without its TLS settings (see `split_tls`).
pub(crate) fn parse_config(conn: &str) -> Result<tokio_postgres::Config, MetadataError> {
    conn.parse().map_err(|_| MetadataError {
        field: "connectionString".into(),
        // tokio-postgres' parse error may quote the string: say less.
        why: "is not a PostgreSQL connection string (key=value pairs or a postgres:// URL)".into(),
    })
}

pub(crate) struct PgTarget {
    cfg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl PgTarget {
    pub(crate) fn parse(conn: &str) -> Result<Self, MetadataError> {
        let (conn, mode, root) = split_tls(conn);
        let mut cfg = parse_config(&conn)?;
        let tls = match mode.as_str() {
            "disable" | "allow" | "prefer" => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            m => Some(
                tls::connector(m, root.as_deref()).map_err(|why| MetadataError {
                    field: "connectionString".into(),
                    why,
                })?,
            ),
        };
        Ok(Self { cfg, tls })
    }

    /// Connects; notifications go to `notify` when given.
    pub(crate) async fn connect(
        &self,
        notify: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        macro_rules! drive {
            ($conn:expr) => {{
                let mut conn = $conn;
                tokio::spawn(async move {
                    let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = msgs.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(tx) = &notify
                                    && tx.send(n.payload().to_owned()).is_err()
                                {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
            }};
        }
        match &self.tls {
            None => {
                let (client, conn) = self.cfg.connect(tokio_postgres::NoTls).await?;
                drive!(conn);
                Ok(client)
            }
            Some(t) => {
                let (client, conn) = self.cfg.connect(t.clone()).await?;
                drive!(conn);
                Ok(client)
            }
        }
    }
}

/// Splits libpq's TLS settings out of a connection string: tokio-postgres
/// knows `disable`/`prefer`/`require`, libpq also `verify-ca` and
/// `verify-full`, and `sslrootcert` names the CA file to verify with.
/// Returns the string tokio-postgres parses, the mode and the CA file.
pub(crate) fn split_tls(conn: &str) -> (String, String, Option<String>) {
    let mut mode = "prefer".to_owned();
    let mut root = None;
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, q)) = conn.split_once('?') else {
            return (conn.to_owned(), mode, root);
        };
        let mut kept = Vec::new();
        for kv in q.split('&') {
            match kv.split_once('=') {
                Some(("sslmode", v)) => mode = v.to_owned(),
                Some(("sslrootcert", v)) => root = Some(v.to_owned()),
                _ => kept.push(kv),
            }
        }
        let rest = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        return (format!("{base}{rest}"), mode, root);
    }
    let mut kept = Vec::new();
    for kv in conn.split_whitespace() {
        match kv.split_once('=') {
            Some(("sslmode", v)) => mode = v.to_owned(),
            Some(("sslrootcert", v)) => root = Some(v.to_owned()),
            _ => kept.push(kv),
        }
    }
    (kept.join(" "), mode, root)
}

/// TLS for the pool: libpq's modes on rustls.
pub(crate) mod tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::pem::PemObject;
    use tokio_postgres_rustls::MakeRustlsConnect;

    /// `require` (and `prefer`) without a CA file encrypt without
    /// verifying, as libpq does; `verify-ca`/`verify-full`, or any mode
    /// with `sslrootcert`, verify the server against that CA.
    pub fn connector(mode: &str, root: Option<&str>) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match root {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?
                {
                    let c = c.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None if matches!(mode, "verify-ca" | "verify-full") => {
                return Err(format!(
                    "sslmode={mode} needs sslrootcert (the CA file to verify with)"
                ));
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// libpq's `sslmode=require`: encrypted, the certificate not checked
    /// (handshake signatures still are).
    #[derive(Debug)]
    struct Unverified(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _end: &CertificateDer<'_>,
            _inter: &[CertificateDer<'_>],
            _name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
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
                &self.0.signature_verification_algorithms,
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
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
