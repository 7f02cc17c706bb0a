//! Byte streams between sidecars, and the seam where TLS attaches.
//!
//! [`Connector`] dials a remote sidecar and [`Acceptor`] takes an accepted
//! connection; both yield an [`Io`]. Today the only variant is plaintext TCP;
//! the mTLS release adds a `Tls` variant and peer identities without touching
//! the pool or the listeners.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a dial may take before the endpoint counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to or from another sidecar.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
}

/// What the listener knows about who connected.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
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
}

/// Dials endpoints.
#[derive(Clone, Debug)]
pub struct Connector {
    timeout: Duration,
}

impl Default for Connector {
    fn default() -> Self {
        Self::new(DEFAULT_CONNECT_TIMEOUT)
    }
}

impl Connector {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<Io, ConnectError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                timeout: self.timeout,
            })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Small request/response messages must not wait for Nagle.
        tcp.set_nodelay(true)
            .map_err(|source| ConnectError::Io { addr, source })?;
        Ok(Io::Plain(tcp))
    }
}

/// Turns accepted TCP connections into [`Io`].
#[derive(Clone, Debug, Default)]
pub struct Acceptor;

impl Acceptor {
    pub async fn accept(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<(Io, PeerInfo)> {
        tcp.set_nodelay(true)?;
        Ok((Io::Plain(tcp), PeerInfo { addr }))
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
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
