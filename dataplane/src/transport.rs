//! Byte streams between sidecars, and where mTLS attaches.
//!
//! [`Connector`] dials a remote sidecar and [`Acceptor`] takes an accepted
//! connection; both yield an [`Io`], plaintext or TLS. With a workload
//! identity both sides run mutual TLS 1.3: the acceptor refuses connections
//! until our first certificate exists and hands the caller's verified
//! SPIFFE ID to the request ([`PeerInfo`]); the connector checks, after the
//! handshake and before any request is written, that the server is exactly
//! the app and namespace the call resolved to.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use skiff_sentry::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::WorkloadIdentity;

/// How long a dial (TCP and, with mTLS, the handshake) may take before the
/// endpoint counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an accepted connection may take to finish its TLS handshake.
pub const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to or from another sidecar.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<ReadAhead>>),
}

/// Reads ahead under TLS: rustls asks its transport for at most 4 KiB at
/// a time, which costs a system call per 4 KiB when many calls' records
/// are waiting. This reads what is there (up to [`READ_AHEAD`]) at once and
/// serves rustls's reads from memory. Writes go straight through.
///
/// The buffer is held only while it has unread bytes; drained, it goes
/// back to its thread's spare slot (see [`SPARE`]), so an idle connection
/// holds none and a busy one neither allocates nor frees per read (a
/// 64 KiB free made glibc consolidate its heap every time).
#[derive(Debug)]
pub struct ReadAhead {
    tcp: TcpStream,
    buf: Option<Box<[u8]>>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// The most one read under TLS takes from the socket.
pub const READ_AHEAD: usize = 64 << 10;

thread_local! {
    /// One drained read-ahead buffer per thread, for the next connection
    /// that reads. Runtime threads are few, so this is the only read-ahead
    /// memory that outlives a read.
    static SPARE: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

impl ReadAhead {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: None,
            start: 0,
            end: 0,
        }
    }

    fn take_buffer() -> Box<[u8]> {
        SPARE
            .with(|s| s.take())
            .unwrap_or_else(|| vec![0; READ_AHEAD].into_boxed_slice())
    }

    fn give_back(&mut self) {
        if let Some(b) = self.buf.take() {
            // A full slot keeps its buffer; this one is freed.
            SPARE.with(|s| {
                let kept = s.take();
                s.set(kept.or(Some(b)));
            });
        }
        self.start = 0;
        self.end = 0;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.start == me.end {
            let buf = me.buf.get_or_insert_with(Self::take_buffer);
            let mut rb = ReadBuf::new(&mut buf[..]);
            let read = Pin::new(&mut me.tcp).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match read {
                Poll::Ready(Ok(())) if n > 0 => {
                    me.start = 0;
                    me.end = n;
                }
                other => {
                    // Nothing read (would block, EOF or an error).
                    me.give_back();
                    return other;
                }
            }
        }
        let Some(buf) = me.buf.as_deref() else {
            return Poll::Ready(Ok(()));
        };
        let n = out.remaining().min(me.end - me.start);
        out.put_slice(&buf[me.start..me.start + n]);
        me.start += n;
        if me.start == me.end {
            me.give_back();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What the listener knows about who connected.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The peer's IP as header text (`X-Forwarded-For`, `Forwarded`),
    /// formatted once per connection rather than once per call.
    pub ip: http::HeaderValue,
    /// The caller's identity from its verified certificate (mTLS only).
    pub id: Option<Arc<VerifiedPeer>>,
}

impl PeerInfo {
    pub fn new(addr: SocketAddr, id: Option<Arc<VerifiedPeer>>) -> Self {
        // An IP address always renders as a valid header value.
        let ip = http::HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Self { addr, ip, id }
    }
}

/// A caller's verified SPIFFE ID, with the header values the callee sets
/// from it, built once per connection rather than once per call.
#[derive(Debug)]
pub struct VerifiedPeer {
    pub id: SpiffeId,
    pub app_id: http::HeaderValue,
    pub namespace: http::HeaderValue,
}

impl VerifiedPeer {
    fn new(id: SpiffeId) -> io::Result<Self> {
        // SPIFFE components are validated to a header-safe alphabet.
        let hv = |s: &str| http::HeaderValue::from_str(s).map_err(io::Error::other);
        Ok(Self {
            app_id: hv(id.app_id())?,
            namespace: hv(id.namespace())?,
            id,
        })
    }
}

/// Who the dialed server must be.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedPeer<'a> {
    pub namespace: &'a str,
    pub app_id: &'a str,
}

impl ExpectedPeer<'_> {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        id.app_id() == self.app_id && id.namespace() == self.namespace
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("mTLS is on and this sidecar has no workload certificate yet (is sentry reachable?)")]
    NoCertificate,
    #[error("mTLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("identity mismatch at {addr}: expected app {expected}, the server is {found}")]
    IdentityMismatch {
        addr: SocketAddr,
        expected: String,
        found: String,
    },
}

/// Dials endpoints.
#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    identity: Option<Arc<WorkloadIdentity>>,
}

impl Default for Connector {
    fn default() -> Self {
        Self::new(DEFAULT_CONNECT_TIMEOUT)
    }
}

impl Connector {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            identity: None,
        }
    }

    /// Dials with mutual TLS as `identity`.
    pub fn with_identity(mut self, identity: Arc<WorkloadIdentity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Dials `addr`; with mTLS, returns the server's verified identity,
    /// which must match `expect` when given.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<(Io, Option<SpiffeId>), ConnectError> {
        tokio::time::timeout(self.timeout, self.dial(addr, expect))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                timeout: self.timeout,
            })?
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        expect: Option<ExpectedPeer<'_>>,
    ) -> Result<(Io, Option<SpiffeId>), ConnectError> {
        // Fail closed before dialing: without a certificate nothing can be sent.
        let tls = match &self.identity {
            Some(id) => Some(id.current().ok_or(ConnectError::NoCertificate)?),
            None => None,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Small request/response messages must not wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|source| ConnectError::Io { addr, source })?;
        let Some(tls) = tls else {
            return Ok((Io::Plain(tcp), None));
        };
        // No SNI: identities are SPIFFE IDs, checked below.
        let stream = tokio_rustls::TlsConnector::from(tls.client.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), ReadAhead::new(tcp))
            .await
            .map_err(|source| ConnectError::Tls { addr, source })?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(skiff_sentry::tls::peer_id)
            .transpose()
            .map_err(|e| ConnectError::Tls {
                addr,
                source: io::Error::other(e),
            })?
            .ok_or_else(|| ConnectError::Tls {
                addr,
                source: io::Error::other("the server sent no certificate"),
            })?;
        if let Some(want) = expect
            && !want.matches(&peer)
        {
            return Err(ConnectError::IdentityMismatch {
                addr,
                expected: format!("{}.{}", want.app_id, want.namespace),
                found: peer.to_string(),
            });
        }
        Ok((
            Io::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))),
            Some(peer),
        ))
    }
}

/// Turns accepted TCP connections into [`Io`].
#[derive(Clone, Default)]
pub struct Acceptor {
    identity: Option<Arc<WorkloadIdentity>>,
}

impl Acceptor {
    /// Plaintext (the app-facing listeners).
    pub fn plain() -> Self {
        Self::default()
    }

    /// Mutual TLS as `identity` (the internal listener).
    pub fn mtls(identity: Arc<WorkloadIdentity>) -> Self {
        Self {
            identity: Some(identity),
        }
    }

    pub async fn accept(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<(Io, PeerInfo)> {
        tcp.set_nodelay(true)?;
        let Some(identity) = &self.identity else {
            return Ok((Io::Plain(tcp), PeerInfo::new(addr, None)));
        };
        let tls = identity.current().ok_or_else(|| {
            io::Error::other(
                "no workload certificate yet: refusing connections until sentry issues one",
            )
        })?;
        let stream = tokio::time::timeout(
            ACCEPT_HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(tls.server.clone()).accept(ReadAhead::new(tcp)),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        // The verifier required a client certificate with a SPIFFE ID in our
        // trust domain, so this is present.
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(skiff_sentry::tls::peer_id)
            .transpose()
            .map_err(io::Error::other)?
            .map(VerifiedPeer::new)
            .transpose()?
            .map(Arc::new);
        Ok((
            Io::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))),
            PeerInfo::new(addr, id),
        ))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// When a connection pool's reaper (the HTTP/2 pool's, the HTTP/1.1 app
/// client's) looks for idle connections: every quarter of the
/// idle timeout (at least 100 ms), first one period from now, so a
/// connection goes between one and 1¼ idle timeouts after its last use.
pub fn reap_interval(idle_timeout: Duration) -> tokio::time::Interval {
    let period = (idle_timeout / 4).max(Duration::from_millis(100));
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn read_ahead_serves_small_reads_and_holds_nothing_when_drained() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut ahead = ReadAhead::new(server);

        let sent: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client.write_all(&sent).await.expect("write");
        let mut got = vec![0; sent.len()];
        // rustls reads 4 KiB at a time; the first read takes what is there.
        for chunk in got.chunks_mut(4096) {
            ahead.read_exact(chunk).await.expect("read");
        }
        assert_eq!(got, sent);
        assert!(ahead.buf.is_none(), "drained: the buffer went back");
        assert!(SPARE.with(|s| {
            let b = s.take();
            let some = b.is_some();
            s.set(b);
            some
        }));

        drop(client);
        let mut rest = Vec::new();
        ahead.read_to_end(&mut rest).await.expect("read to EOF");
        assert!(rest.is_empty());
        assert!(ahead.buf.is_none());
    }
}
