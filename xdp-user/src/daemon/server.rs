//! The API's accept loop, with bounds on what clients can hold.
//!
//! `axum::serve` accepts without limit and sets no timeouts: ~1,100 idle
//! connections took the daemon to its file limit (EMFILE), and 40 idle or
//! half-sent ones stayed open for 90 s. Here a connection is accepted only
//! with one of `max_connections` permits (the rest wait in the kernel's
//! backlog, holding none of the daemon's file descriptors), a connection must
//! send each request's headers within `header_timeout_secs` (hyper's header
//! read timeout, which also closes a keep-alive connection idle that long),
//! and bodies must arrive within `body_timeout_secs` (api::router).
//!
//! With TLS the handshake runs in the connection's task, holding its permit,
//! and must finish within `header_timeout_secs` too: a client that opens a
//! connection and never completes the handshake is closed like an idle one.
//! Each connection takes the TLS config current when it was accepted, so a
//! reload (SIGHUP) changes new handshakes and leaves open connections alone.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt;

pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// How long connections still open at shutdown get to finish.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<super::tls::Acceptor>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: the connection waits in the backlog; try again soon.
                    accept_errors.note(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let watcher = graceful.watcher();
        let http = http.clone();
        let tls = tls.as_ref().map(|t| t.current());
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad request): nothing to report.
            match tls {
                None => {
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake not finished within header_timeout_secs; closed"),
                },
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("API connections still open {DRAIN:?} after shutdown began; closing them");
    }
    Ok(())
}

/// Logs accept failures at most every 10 s, with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last: Option<Instant>,
    since: u64,
}

impl AcceptErrors {
    fn note(&mut self, e: &std::io::Error) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(failures = self.since, "accepting API connections fails: {e} (enforcement is not affected)");
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// Raise the soft limit on open files to the hard limit (as Go's runtime
/// does): the systemd default soft limit of 1,024 is a relic of select(2).
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        let old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        // Safety: a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0 {
            tracing::debug!(from = old, to = rl.rlim_cur, "raised the open-files limit");
        }
    }
}
