//! The accept loop both simulated APIs share: hyper's HTTP/1.1 connection driver around an axum
//! router, optionally behind TLS.
//!
//! One request per connection (`Connection: close`), as the simulators always answered: every
//! request gets a fresh connection, so a client never reuses one the server is about to drop.
//! Connections are tasks of the accept loop's own [`JoinSet`], so aborting the returned handle
//! closes the listener *and* every open connection, as a server that went down would.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A client that connects and says nothing (no handshake, no request head) is dropped after this.
const IDLE: Duration = Duration::from_secs(10);
/// hyper's read buffer, which bounds a request head (ours are well under 1 KiB).
const MAX_HEAD: usize = 16 * 1024;

/// Serves `app` on `listener` until the returned task is aborted. `name` tags debug logs.
pub(crate) fn spawn(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    name: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            // Finished connections leave the set here, so it holds only open ones.
            while connections.try_join_next().is_some() {}
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "sim {name} accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (app, tls) = (app.clone(), tls.clone());
            connections.spawn(async move {
                match tls {
                    None => serve_connection(tcp, app, name).await,
                    // A client that rejects the certificate (pinning) ends here, before any request.
                    Some(acceptor) => {
                        match tokio::time::timeout(IDLE, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => serve_connection(stream, app, name).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "sim {name} TLS handshake"),
                            Err(_) => tracing::debug!("sim {name} TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    })
}

async fn serve_connection<S>(stream: S, app: Router, name: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "sim {name} connection");
    }
}
