//! Running an HTTP/2 connection's streams inside the connection's own task.
//!
//! hyper's HTTP/2 server hands every accepted stream to an executor. With tokio's executor each
//! stream becomes a task of its own, so one request costs a task allocation, and every step
//! between the stream and its connection (request frames in, response frames out) is a wake-up
//! of another task. Envoy and HAProxy run a connection's streams on the thread that owns the
//! connection. [`StreamExecutor`] does the same within tokio: hyper queues the stream future on
//! the executor while the connection is being polled, and [`ConnectionWithStreams`] polls the
//! queued streams right after the connection, in the same task. A stream that waits (for its
//! upstream, or for flow control) is woken through [`FuturesUnordered`], which wakes this task.
//!
//! The cost is that one connection's streams share one task: they are polled one after another,
//! never in parallel on two cores. A downstream HTTP/2 connection is pinned to one worker anyway
//! (each worker has its own runtime), so nothing is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

/// A stream (or an upgraded stream's copy task) handed over by hyper.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the executor and the driving future share.
#[derive(Default)]
struct Shared {
    /// Futures handed over since the driver last took them.
    queued: Mutex<Vec<StreamFuture>>,
    /// The driving task, to wake when a future is handed over while it is not being polled.
    waker: AtomicWaker,
    /// The driver is inside `poll`, and will take what is queued before it returns.
    polling: AtomicBool,
}

impl Shared {
    fn queued(&self) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
        // The lock is never held across code that can panic, so poisoning cannot hide a broken
        // invariant; take the guard either way.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// hyper's executor for one HTTP/2 connection: it queues each stream for
/// [`ConnectionWithStreams`] instead of spawning a task.
#[derive(Clone, Default)]
pub struct StreamExecutor {
    shared: Arc<Shared>,
}

impl StreamExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drive `connection` (a hyper HTTP/2 server connection built with this executor) and its
    /// streams in the calling task.
    pub fn drive<C: Future>(self, connection: C) -> ConnectionWithStreams<C> {
        ConnectionWithStreams {
            connection: Box::pin(connection),
            running: FuturesUnordered::new(),
            shared: self.shared,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.shared.queued().push(Box::pin(future));
        // hyper hands futures over from inside the driver's poll, which takes them before it
        // returns. Anything else must wake the driver. (The driver clears `polling` before its
        // last look at the queue, so one of the two sees the other.)
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.waker.wake();
        }
    }
}

/// A connection future polled together with the streams it started. It resolves with the
/// connection's own output; streams still running then are dropped, since their connection is
/// gone.
pub struct ConnectionWithStreams<C> {
    connection: Pin<Box<C>>,
    running: FuturesUnordered<StreamFuture>,
    shared: Arc<Shared>,
}

impl<C> ConnectionWithStreams<C> {
    /// The connection, for calls such as `graceful_shutdown`.
    pub fn connection(&mut self) -> Pin<&mut C> {
        self.connection.as_mut()
    }

    /// Move the queued futures into the running set; true when there were any.
    fn take_queued(&mut self) -> bool {
        let mut queued = self.shared.queued();
        let any = !queued.is_empty();
        for future in queued.drain(..) {
            self.running.push(future);
        }
        any
    }
}

impl<C: Future> Future for ConnectionWithStreams<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        this.shared.waker.register(cx.waker());
        loop {
            this.shared.polling.store(true, Ordering::SeqCst);
            if let Poll::Ready(out) = this.connection.as_mut().poll(cx) {
                this.shared.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(out);
            }
            this.take_queued();
            // Run every stream that is ready. Finished streams are simply dropped.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            this.shared.polling.store(false, Ordering::SeqCst);
            // A stream may have handed over a future of its own (an upgraded stream's copy
            // task); run it before going to sleep. Otherwise every stream and the connection
            // have registered their wake-ups.
            if !this.take_queued() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;

    /// A connection stand-in that hands `n` futures to the executor on its first poll, then
    /// finishes once all of them have run.
    struct FakeConnection {
        executor: StreamExecutor,
        started: bool,
        done: Arc<AtomicUsize>,
        n: usize,
    }

    impl Future for FakeConnection {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                for _ in 0..self.n {
                    let done = self.done.clone();
                    let waker = cx.waker().clone();
                    self.executor.execute(async move {
                        tokio::task::yield_now().await;
                        done.fetch_add(1, Ordering::SeqCst);
                        waker.wake();
                    });
                }
            }
            let done = self.done.load(Ordering::SeqCst);
            if done == self.n {
                Poll::Ready(done)
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn streams_run_in_the_connection_task_until_it_ends() {
        let executor = StreamExecutor::new();
        let done = Arc::new(AtomicUsize::new(0));
        let connection = FakeConnection {
            executor: executor.clone(),
            started: false,
            done: done.clone(),
            n: 3,
        };
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            executor.drive(connection),
        )
        .await;
        assert_eq!(out.ok(), Some(3));
    }

    #[tokio::test]
    async fn a_future_handed_over_between_polls_wakes_the_driver() {
        let executor = StreamExecutor::new();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        // The connection finishes once the late future has run and signalled.
        let connection = std::future::poll_fn(move |cx| Pin::new(&mut rx).poll(cx).map(|_| ()));
        let late = executor.clone();
        let driver = tokio::spawn(executor.drive(connection));
        tokio::task::yield_now().await;
        // Handed over from outside the driver's poll: the driver must be woken to run it.
        late.execute(async move {
            let _ = tx.send(());
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
        assert!(matches!(out, Ok(Ok(()))));
    }
}
