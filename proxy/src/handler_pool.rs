//! Per-thread pools of the boxes that hold requests' futures.
//!
//! A request's future ([`crate::server::handle`]) is about 4 KiB: routing, the upstream exchange
//! and its retries all live in it. The connection boxes it so that its own future stays small
//! (ten thousand idle connections would otherwise each carry 4 KiB more). A box that size is past
//! what the C allocator serves from its per-thread cache, so boxing per request went through the
//! allocator's slow path (`_int_malloc`, `_int_free`, and the consolidation of free chunks): about
//! 2 % of a proxy core under load.
//!
//! Here a request's future goes into a box taken from the worker thread's pool, and the box goes
//! back once the future has finished (the response head is ready; the body streams on without it).
//! A busy worker cycles through as many boxes as it has requests in flight, and an idle connection
//! holds none. A future dropped before it finished (the client went away) is freed with its box.
//! Each pool keeps at most [`MAX_POOLED`] boxes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tokio_util::sync::ReusableBoxFuture;

use crate::body::ResponseBody;

/// Boxes kept per thread.
pub const MAX_POOLED: usize = 64;

type Slot = ReusableBoxFuture<'static, Response<ResponseBody>>;

thread_local! {
    static POOL: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// A request's future in a pooled box.
pub struct PooledHandler {
    /// `None` once the future has finished and the box has gone back to the pool.
    slot: Option<Slot>,
}

impl PooledHandler {
    /// Put `future` in a box from this thread's pool (a new box when the pool is empty, or when
    /// the pooled box was made for a future of another size).
    pub fn new<F>(future: F) -> Self
    where
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let slot = match POOL.with(|p| p.borrow_mut().pop()) {
            Some(mut slot) => {
                slot.set(future);
                slot
            }
            None => ReusableBoxFuture::new(future),
        };
        PooledHandler { slot: Some(slot) }
    }
}

impl Future for PooledHandler {
    type Output = Response<ResponseBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.slot.as_mut() else {
            // Polled again after it finished: a caller's bug, answered as a stalled future
            // rather than a panic on the request path.
            return Poll::Pending;
        };
        let out = slot.poll(cx);
        if out.is_ready() {
            // The finished future holds nothing: its box can serve the next request.
            if let Some(slot) = self.slot.take() {
                give(slot);
            }
        }
        out
    }
}

fn give(slot: Slot) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(slot);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().len())
    }

    fn ok() -> Response<ResponseBody> {
        Response::new(ResponseBody::empty())
    }

    #[tokio::test]
    async fn a_finished_future_returns_its_box_and_the_next_request_reuses_it() {
        POOL.with(|p| p.borrow_mut().clear());
        let first = PooledHandler::new(async { ok() });
        assert_eq!(pooled(), 0);
        first.await;
        assert_eq!(pooled(), 1, "the box went back to the pool");
        let second = PooledHandler::new(async { ok() });
        assert_eq!(pooled(), 0, "the pooled box was taken again");
        assert_eq!(second.await.status(), 200);
        assert_eq!(pooled(), 1);
    }

    #[tokio::test]
    async fn a_future_dropped_before_it_finished_is_dropped_with_its_box() {
        POOL.with(|p| p.borrow_mut().clear());
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let guard = Guard(drops.clone());
        let pending = PooledHandler::new(async move {
            let _g = guard;
            std::future::pending::<()>().await;
            ok()
        });
        drop(pending);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the future's state was dropped"
        );
        assert_eq!(pooled(), 0, "an unfinished box is not pooled");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_pooled_boxes() {
        POOL.with(|p| p.borrow_mut().clear());
        let handlers: Vec<_> = (0..MAX_POOLED + 8)
            .map(|_| PooledHandler::new(async { ok() }))
            .collect();
        for h in handlers {
            h.await;
        }
        assert_eq!(pooled(), MAX_POOLED);
    }
}
