//! Binding the HTTP listeners of the daemon (metrics and health) and of the
//! console.

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    what: &'static str,
    source: std::io::Error,
}

/// Binds `addr` (port 0 picks a free port) for `what` ("metrics", "the
/// console"); the listener and the address it is bound to.
pub(crate) async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), ListenError> {
    let error = |source| ListenError { addr, what, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}
