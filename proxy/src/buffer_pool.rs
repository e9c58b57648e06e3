//! Per-thread pools of connection I/O buffers.
//!
//! A downstream HTTP/1.1 connection holds a read buffer only while it has bytes to parse and a
//! write buffer only while a response is being written; between requests both go back to the pool
//! of the worker thread. A busy worker reuses the same few buffers without calling the allocator,
//! and ten thousand idle keep-alive connections hold no buffers at all. Each pool keeps at most
//! [`MAX_POOLED`] buffers of each kind; the rest are freed.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a fresh read buffer (hyper's and Envoy's usual read size).
pub const READ_SIZE: usize = 8192;

/// Initial capacity of a write buffer (a response head and a small body).
const WRITE_SIZE: usize = 4096;

/// Buffers kept per thread and kind.
pub const MAX_POOLED: usize = 64;

/// Write buffers that grew beyond this are freed rather than pooled.
const MAX_WRITE_POOLED: usize = 64 * 1024;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer with room for at least [`READ_SIZE`] bytes.
pub fn take_read() -> BytesMut {
    let mut buf = READ
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE));
    // A pooled buffer whose front was split off reclaims its whole allocation here once nothing
    // else shares it (no allocation); a shared one is replaced.
    buf.reserve(READ_SIZE);
    buf
}

/// Return an empty read buffer.
pub fn give_read(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() == 0 {
        return;
    }
    READ.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}

/// An empty write buffer.
pub fn take_write() -> Vec<u8> {
    WRITE
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(WRITE_SIZE))
}

/// Return a write buffer.
pub fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() > MAX_WRITE_POOLED {
        return;
    }
    buf.clear();
    WRITE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let a = take_read();
        let ptr = a.as_ptr();
        give_read(a);
        let b = take_read();
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer comes back");
        assert!(b.capacity() >= READ_SIZE);
        let many: Vec<_> = (0..MAX_POOLED + 10).map(|_| take_read()).collect();
        many.into_iter().for_each(give_read);
        READ.with(|p| assert_eq!(p.borrow().len(), MAX_POOLED));
        give_read(b);
    }

    #[test]
    fn a_read_buffer_with_its_front_split_off_is_reclaimed_in_place() {
        let mut a = take_read();
        let ptr = a.as_ptr();
        a.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(a.split_to(10).freeze());
        let _ = a.split_to(a.len());
        give_read(a);
        let b = take_read();
        assert_eq!(b.as_ptr(), ptr);
        give_read(b);
    }
}
