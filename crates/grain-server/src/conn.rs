//! Accepting connections, with time limits on what a client may withhold.
//!
//! `axum::serve` sets no timer on hyper, so a client could hold a connection forever by sending
//! its headers one byte at a time (slowloris), or by not reading a response once the socket
//! buffers are full — which also keeps its request admitted in the engine. This loop serves each
//! connection with hyper directly and bounds both by [`ClientTimeouts`]:
//! - hyper's header-read timeout covers request headers, and idle keep-alive connections too
//!   (hyper starts that timer whenever it waits for the next request);
//! - a connection whose writes make no progress for the stall timeout is closed, which drops the
//!   response body and cancels its request at the scheduler's next step.
//!
//! The request body is bounded by the handler (`routes::chat`), which knows the limits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may keep the server waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// To send a request's headers; also how long an idle keep-alive connection stays open.
    pub header_read: Duration,
    /// Without reading any of the response while the server has bytes to send it.
    pub write_stall: Duration,
}

impl ClientTimeouts {
    /// The same limit for everything a client can withhold.
    pub fn uniform(timeout: Duration) -> Self {
        Self {
            header_read: timeout,
            write_stall: timeout,
        }
    }
}

/// Accepts connections until `shutdown` resolves, then asks every connection to close once its
/// in-flight response is done and waits for them.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    timeouts: ClientTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stall = Arc::new(StallClock::default());
        let io = TokioIo::new(StallTracked {
            inner: stream,
            clock: Arc::clone(&stall),
        });
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        let stall_limit = timeouts.write_stall;
        tokio::spawn(async move {
            // Pinned outside `select!`, which would otherwise drop (close) the connection before
            // its branch runs: the log line comes first, then the close that frees the
            // request's admission slot.
            tokio::pin!(conn);
            tokio::select! {
                result = &mut conn => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = stall.exceeded(stall_limit) => {
                    tracing::info!(
                        stalled_s = stall_limit.as_secs_f64(),
                        "closing a connection whose client stopped reading"
                    );
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors from `accept` concern one connection (the peer went away) or the process (out of file
/// descriptors). Neither may stop the server; the latter gets a pause so the loop does not spin.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; pausing accepts for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// When the connection's writes started to block, if they do.
#[derive(Debug)]
struct StallClock {
    origin: Instant,
    /// Milliseconds since `origin` + 1 when the current stall began; 0 when not stalled.
    since: AtomicU64,
}

impl Default for StallClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl StallClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn on_write<T>(&self, poll: &Poll<io::Result<T>>) {
        match poll {
            Poll::Pending => {
                let _ = self.since.compare_exchange(
                    0,
                    self.now_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Poll::Ready(_) => self.since.store(0, Ordering::Release),
        }
    }

    /// Resolves once a single stall has lasted `limit`.
    async fn exceeded(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let since = self.since.load(Ordering::Acquire);
            if since != 0 && self.now_ms().saturating_sub(since) >= limit_ms {
                return;
            }
        }
    }
}

/// A socket that reports to its [`StallClock`] whether writes are getting through.
struct StallTracked {
    inner: TcpStream,
    clock: Arc<StallClock>,
}

impl AsyncRead for StallTracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallTracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.on_write(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.on_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.clock.on_write(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stall_is_reported_only_while_it_lasts() {
        let clock = StallClock::default();
        clock.on_write::<usize>(&Poll::Pending);
        let first = clock.since.load(Ordering::Acquire);
        assert_ne!(first, 0);
        // A second Pending keeps the original start of the stall.
        tokio::time::sleep(Duration::from_millis(5)).await;
        clock.on_write::<usize>(&Poll::Pending);
        assert_eq!(clock.since.load(Ordering::Acquire), first);
        clock.on_write(&Poll::Ready(Ok(3usize)));
        assert_eq!(clock.since.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn exceeded_resolves_after_a_long_enough_stall() {
        let clock = StallClock::default();
        clock.on_write::<usize>(&Poll::Pending);
        tokio::time::timeout(
            Duration::from_secs(5),
            clock.exceeded(Duration::from_millis(100)),
        )
        .await
        .expect("a stall of 100 ms is noticed");
    }
}
