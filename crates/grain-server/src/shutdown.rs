//! Graceful drain: refuse new work, let in-flight requests finish, then stop.
//!
//! The HTTP layer counts its own in-flight requests (a guard lives inside each streaming body),
//! because the engine being idle is not enough: the last SSE chunks may still be on their way to
//! the client when the engine has already forgotten the request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Shared drain state of one server.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Held while a request is being served; dropping it (when the response body is done or the
/// client went away) releases the request.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Registers a request, or `None` once draining has begun.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(self));
        // Checked after counting so that a drain starting concurrently either sees this
        // request or this request sees the drain.
        if self.is_draining() {
            drop(guard);
            return None;
        }
        Some(guard)
    }

    /// Waits until no request is in flight, up to `deadline`. Returns whether it got there.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

/// Grace given to connections after the drain, to flush their last bytes, before they are cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_guards_and_refuses_new_entries() {
        let drain = Arc::new(Drain::default());
        let a = drain.enter().unwrap();
        let b = drain.enter().unwrap();
        drain.begin();
        assert!(drain.enter().is_none());
        assert_eq!(drain.in_flight(), 2);
        let waiter = {
            let drain = Arc::clone(&drain);
            tokio::spawn(async move {
                drain
                    .wait_idle(Instant::now() + Duration::from_secs(60))
                    .await
            })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let drain = Arc::new(Drain::default());
        let _stuck = drain.enter().unwrap();
        drain.begin();
        assert!(
            !drain
                .wait_idle(Instant::now() + Duration::from_secs(5))
                .await
        );
    }
}
