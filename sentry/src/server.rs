//! The sentry service: Dapr's `dapr.proto.sentry.v1.CA/SignCertificate`
//! over TLS.
//!
//! A request is granted when its token proves the identity asked for (see
//! [`crate::validator`]) and its CSR passes [`crate::csr::check`]; the reply
//! carries the leaf + issuer chain, the trust anchors and the expiry. The
//! credentials directory is polled: a new issuer (signed by the same root)
//! is picked up without a restart, and a broken one is reported and ignored
//! while the last good one keeps signing.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use skiff_proto::sentry::ca_server::{Ca, CaServer};
use skiff_proto::sentry::{
    SignCertificateRequest, SignCertificateResponse, sign_certificate_request::TokenValidator,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

use crate::ca::{Authority, CaError, Fingerprint, KeyAlg};
use crate::tls::{self, Workload};
use crate::validator::Validators;
use crate::{SpiffeId, csr};

/// The app id in sentry's own SPIFFE ID (Dapr's).
pub const SENTRY_APP_ID: &str = "dapr-sentry";
/// How often the credentials directory is checked for a new issuer.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Lifetime of sentry's own serving certificate; renewed at half of it.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Config {
    pub credentials: PathBuf,
    pub trust_domain: String,
    /// Sentry's own namespace (in its SPIFFE ID).
    pub namespace: String,
    pub workload_ttl: Duration,
    pub key_alg: KeyAlg,
    pub validators: Validators,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("credentials: {0}")]
    Ca(#[from] CaError),
    #[error("serving certificate: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

struct State {
    cfg: Config,
    authority: ArcSwap<Authority>,
    serving: ArcSwap<rustls::ServerConfig>,
    /// When the serving certificate was minted.
    serving_at: Mutex<SystemTime>,
    fingerprint: Mutex<Fingerprint>,
}

/// A sentry whose credentials are in place, ready to serve.
pub struct Sentry {
    state: Arc<State>,
}

impl Sentry {
    /// Loads (or on first start creates) the credentials and sentry's own
    /// serving certificate. Call it before binding the port: a client that
    /// waits for the port may then read `ca.crt` at once.
    pub fn start(cfg: Config) -> Result<Self, ServeError> {
        let (authority, created) =
            Authority::load_or_create(&cfg.credentials, &cfg.trust_domain, cfg.key_alg)?;
        let fingerprint = Fingerprint::of(&cfg.credentials);
        if created {
            tracing::info!(dir = %cfg.credentials.display(), "created a new root and issuer");
        }
        let serving = serving_config(&authority, &cfg)?;
        let state = Arc::new(State {
            authority: ArcSwap::from_pointee(authority),
            serving: ArcSwap::new(serving),
            serving_at: Mutex::new(SystemTime::now()),
            fingerprint: Mutex::new(fingerprint),
            cfg,
        });
        Ok(Self { state })
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state;
        tokio::spawn(watch(Arc::downgrade(&state)));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept(listener, state.clone(), tx));
        tonic::transport::Server::builder()
            .add_service(CaServer::new(Svc { state }))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await?;
        Ok(())
    }
}

fn serving_config(a: &Authority, cfg: &Config) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let id = own_id(cfg);
    let key = rcgen::KeyPair::generate_for(cfg.key_alg.rcgen()).map_err(CaError::from)?;
    let issued = a.sign_own(&key, &id, SERVING_TTL, &["localhost"])?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let w = Workload::new(issued.chain, der)?;
    Ok(tls::open_server_config(&w)?)
}

fn own_id(cfg: &Config) -> SpiffeId {
    SpiffeId::new(&cfg.trust_domain, &cfg.namespace, SENTRY_APP_ID).unwrap_or_else(|_| {
        SpiffeId::new(crate::DEFAULT_TRUST_DOMAIN, "default", SENTRY_APP_ID).expect("constant id")
    })
}

/// Reloads the credentials when their files change and renews the serving
/// certificate; stops when the server is gone.
async fn watch(state: std::sync::Weak<State>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let now_fp = Fingerprint::of(&s.cfg.credentials);
        let changed = s
            .fingerprint
            .lock()
            .map(|fp| *fp != now_fp)
            .unwrap_or(false);
        let stale = s
            .serving_at
            .lock()
            .map(|at| at.elapsed().unwrap_or_default() > SERVING_TTL / 2)
            .unwrap_or(false);
        if changed {
            if let Ok(mut fp) = s.fingerprint.lock() {
                *fp = now_fp;
            }
            match Authority::load(&s.cfg.credentials) {
                Ok(a) => {
                    tracing::info!(dir = %s.cfg.credentials.display(), "loaded new issuer credentials");
                    s.authority.store(Arc::new(a));
                }
                Err(e) => {
                    // Files may be mid-copy; the next change retries.
                    tracing::warn!(error = %e, "new credentials are not usable; still signing with the previous issuer");
                    continue;
                }
            }
        }
        if changed || stale {
            match serving_config(&s.authority.load(), &s.cfg) {
                Ok(c) => {
                    s.serving.store(c);
                    if let Ok(mut at) = s.serving_at.lock() {
                        *at = SystemTime::now();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing the serving certificate failed"),
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    state: Arc<State>,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(state.serving.load_full());
        let conn_tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conn_tx.send(Ok(TlsConn(Box::new(tls)))).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

struct Svc {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Ca for Svc {
    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        let req = request.into_inner();
        let s = &self.state;
        let td = &s.cfg.trust_domain;
        if !req.trust_domain.is_empty() && &req.trust_domain != td {
            return Err(Status::permission_denied(format!(
                "trust domain {:?} is not this sentry's ({td:?})",
                req.trust_domain
            )));
        }
        let id = SpiffeId::new(td, &req.namespace, &req.id)
            .map_err(|e| Status::invalid_argument(format!("requested identity: {e}")))?;
        let asked =
            TokenValidator::try_from(req.token_validator).unwrap_or(TokenValidator::Unknown);
        let method = s.cfg.validators.method(asked);
        if let Err(e) = s.cfg.validators.validate(method, &id, &req.token).await {
            tracing::info!(%id, validator = %method, error = %e, "refused a certificate");
            return Err(Status::permission_denied(format!("{id}: {e}")));
        }
        let checked = csr::check(&req.certificate_signing_request, &id).map_err(|e| {
            tracing::info!(%id, error = %e, "refused a CSR");
            Status::invalid_argument(format!("{id}: {e}"))
        })?;
        let authority = s.authority.load();
        let issued = authority
            .sign(&checked, &id, s.cfg.workload_ttl)
            .map_err(|e| Status::internal(format!("signing for {id}: {e}")))?;
        tracing::debug!(%id, "issued a workload certificate");
        let valid_until = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Response::new(SignCertificateResponse {
            workload_certificate: issued.chain_pem().into(),
            trust_chain_certificates: vec![authority.anchors_pem().as_bytes().to_vec().into()],
            valid_until: Some(skiff_proto::google::protobuf::Timestamp {
                seconds: valid_until.as_secs() as i64,
                nanos: valid_until.subsec_nanos() as i32,
            }),
        }))
    }
}

/// A TLS connection tonic can serve.
struct TlsConn(Box<tokio_rustls::server::TlsStream<TcpStream>>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}
