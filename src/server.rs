//! The HTTP/1.1 server loop, with the limits `axum::serve` does not offer: a deadline for a
//! request's headers, a cap on open connections, and a deadline for graceful shutdown.
//!
//! (The deadline for a request's body is where bodies are read, `api::json::JsonBody`.)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// How long a client may take to send a request's headers (also an idle keep-alive
    /// connection's next request).
    pub header_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long requests in progress may take to finish once shutdown begins.
    pub shutdown_deadline: Duration,
}

/// Serves `router` on `listener` until `stop`, then lets requests in progress finish for at
/// most `shutdown_deadline` and drops the rest: a dropped request gets no answer, so nothing
/// it asked for is acknowledged.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        // A free slot first, then a connection: at the cap, new clients wait in the backlog
        // instead of being accepted and left without an answer.
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(limits.shutdown_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            deadline_secs = limits.shutdown_deadline.as_secs_f64(),
            "shutdown deadline passed: dropping the requests still in progress (unanswered, so \
             unacknowledged)"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}
