//! Per-thread pools of the boxes that hold requests' futures.
//!
//! A request's future ([`crate::server::handle`]) is about 2 KiB: the request, routing and the
//! upstream exchange live in it. The connection boxes it so that its own future stays small
//! (ten thousand idle connections would otherwise each carry 2 KiB more). A box that size is past
//! what the C allocator serves from its per-thread cache, so boxing per request went through the
//! allocator's slow path (`_int_malloc`, `_int_free`, and the consolidation of free chunks): about
//! 2 % of a proxy core under load.
//!
//! Here a request's future is written into memory taken from the worker thread's pool, and the
//! memory goes back once the future has finished (the response head is ready; the body streams on
//! without it). A busy worker cycles through as many boxes as it has requests in flight, and an
//! idle connection holds none. A future dropped before it finished (the client went away) is freed
//! with its box. Each pool keeps at most [`MAX_POOLED`] boxes.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

use http::Response;

use crate::body::ResponseBody;

/// Boxes kept per thread.
pub const MAX_POOLED: usize = 64;

type Handler = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

/// The memory of a box whose future has finished and been dropped: allocated by the global
/// allocator with `layout`, holding no value, owned by this block alone.
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: a block is only made (in `recycle`) from a box's allocation of non-zero size,
        // made by the global allocator with `layout` (`Layout::for_value` of the value it held is
        // the layout `Box` allocated it with); nothing else refers to it, so it is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

thread_local! {
    static POOL: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// A request's future in a pooled box.
pub struct PooledHandler {
    /// `None` once the future has finished and its box has gone back to the pool.
    future: Option<Handler>,
}

impl PooledHandler {
    /// Put `future` in a box from this thread's pool (a new box when the pool is empty, or when
    /// the pooled box was made for a future of another layout).
    pub fn new<F>(future: F) -> Self
    where
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let layout = Layout::new::<F>();
        let block = POOL.with(|p| {
            let mut p = p.borrow_mut();
            match p.last() {
                Some(b) if b.layout == layout => p.pop(),
                _ => None,
            }
        });
        let boxed = match block {
            Some(block) => {
                let ptr = block.ptr.cast::<F>().as_ptr();
                // The memory now belongs to the box made below.
                std::mem::forget(block);
                // SAFETY: `ptr` is valid for a write of an `F` and aligned for it: the block was
                // allocated by the global allocator with `Layout::new::<F>()` (its layout is
                // equal, checked above) and holds no value, so the write drops nothing. After it
                // the memory holds a valid `F` and was allocated with `F`'s layout by the global
                // allocator, which is what `Box::from_raw` requires; the box is its only owner.
                unsafe {
                    ptr.write(future);
                    Box::from_raw(ptr)
                }
            }
            None => Box::new(future),
        };
        PooledHandler {
            future: Some(Box::into_pin(boxed)),
        }
    }
}

impl Future for PooledHandler {
    type Output = Response<ResponseBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            // Polled again after it finished: a caller's bug, answered as a stalled future
            // rather than a panic on the request path.
            return Poll::Pending;
        };
        let out = future.as_mut().poll(cx);
        if out.is_ready() {
            if let Some(future) = self.future.take() {
                recycle(future);
            }
        }
        out
    }
}

/// Drop a finished future in place and keep its box's memory for the next request.
fn recycle(future: Handler) {
    let layout = Layout::for_value::<dyn Future<Output = Response<ResponseBody>> + Send>(&*future);
    let full = POOL.with(|p| p.borrow().len() >= MAX_POOLED);
    if full || layout.size() == 0 {
        // A zero-sized future has no allocation to keep.
        return;
    }
    // SAFETY: the value is dropped in place just below, before its memory is reused or freed,
    // and is never used again; that is all `Pin` asks of memory that held a pinned value.
    let raw = Box::into_raw(unsafe { Pin::into_inner_unchecked(future) });
    // SAFETY: `raw` comes from `Box::into_raw`: valid, aligned, holding a live value that nothing
    // else refers to; it is dropped exactly once, here, and the memory is kept only as a block.
    unsafe { std::ptr::drop_in_place(raw) };
    if let Some(ptr) = NonNull::new(raw.cast::<u8>()) {
        POOL.with(|p| p.borrow_mut().push(Block { ptr, layout }));
    }
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
    async fn a_future_of_another_layout_gets_a_box_of_its_own() {
        POOL.with(|p| p.borrow_mut().clear());
        PooledHandler::new(async { ok() }).await;
        assert_eq!(pooled(), 1);
        // A larger state: the pooled block does not fit it and stays pooled.
        let big = [7u8; 512];
        let other = PooledHandler::new(async move {
            tokio::task::yield_now().await;
            let mut r = ok();
            *r.status_mut() = http::StatusCode::from_u16(200 + u16::from(big[511] % 2)).unwrap();
            r
        });
        assert_eq!(pooled(), 1, "the other layout's block was left in the pool");
        assert_eq!(other.await.status(), 201);
        assert_eq!(pooled(), 2);
        // A future of the same layout (even of another type) reuses the block on top.
        let again = PooledHandler::new(async move {
            tokio::task::yield_now().await;
            let mut r = ok();
            *r.status_mut() = http::StatusCode::from_u16(200 + u16::from(big[0] % 2)).unwrap();
            r
        });
        assert_eq!(pooled(), 1, "the same layout's block was taken");
        assert_eq!(again.await.status(), 201);
        assert_eq!(pooled(), 2);
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
