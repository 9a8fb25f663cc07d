//! Which connections the controller's listeners keep: at most [`CONNECTIONS_PER_PEER`] open
//! from one peer address (IPv6: one /64), and none that has not sent its first byte within
//! [`FIRST_BYTE`]. A connection that sends nothing never reaches the HTTP server's own header
//! deadline (it starts at the first byte), and HTTP/2 has no idle deadline at all: without
//! this, idle connections would be held until the controller runs out of file descriptors.
//!
//! An acceptor for `axum_server` (before TLS, on the TCP stream); it binds nothing.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::shares::{Share, Shares};

/// Most connections open at once from one peer address (an agent holds about two: many
/// agents behind one NAT address share it).
pub const CONNECTIONS_PER_PEER: usize = 512;
/// How long a new connection may stay silent.
pub const FIRST_BYTE: Duration = Duration::from_secs(10);

/// The acceptor: counts connections per peer and waits for each one's first byte.
#[derive(Clone)]
pub struct Admission {
    open: Arc<Shares<IpAddr>>,
    per_peer: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            open: Arc::default(),
            per_peer: CONNECTIONS_PER_PEER,
        }
    }
}

impl Admission {
    fn enter(&self, peer: IpAddr) -> io::Result<Share<IpAddr>> {
        let peer = super::intake::peer_key(peer);
        self.open.take(peer, 1, self.per_peer).map_err(|_| {
            tracing::debug!(%peer, limit = self.per_peer, "a connection refused: its address has as many open as it may");
            io::Error::other("too many connections from one address")
        })
    }
}

/// A TCP stream that holds its slot for as long as it lives.
pub struct Admitted {
    stream: TcpStream,
    _slot: Share<IpAddr>,
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for Admission {
    type Stream = Admitted;
    type Service = S;
    type Future = futures::future::BoxFuture<'static, io::Result<(Admitted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let slot = this.enter(stream.peer_addr()?.ip())?;
            let mut first = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTE, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => Ok((
                    Admitted {
                        stream,
                        _slot: slot,
                    },
                    service,
                )),
                Ok(Err(e)) => Err(e),
                _ => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent nothing",
                )),
            }
        })
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
