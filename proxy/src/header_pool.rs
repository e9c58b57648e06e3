//! Per-thread pools of emptied header maps.
//!
//! Every proxied request builds two `HeaderMap`s (the request's, from the client, and the
//! response's, from the upstream), each two allocations large enough to miss the allocator's fast
//! path. A map whose message has been written goes back to its worker thread's pool, emptied but
//! with its memory, and the next parse takes it from there. Each pool keeps at most
//! [`MAX_POOLED`] maps, and only maps of ordinary size: one that grew for an unusually large
//! message is freed.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread.
pub const MAX_POOLED: usize = 64;

/// Maps with room for more headers than this are freed rather than pooled.
const MAX_POOLED_CAPACITY: usize = 96;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `capacity` headers.
pub fn take(capacity: usize) -> HeaderMap {
    match MAPS.with(|p| p.borrow_mut().pop()) {
        Some(mut map) => {
            if map.capacity() < capacity {
                map.reserve(capacity - map.capacity());
            }
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Give back a map whose message is done with; its headers are dropped here.
pub fn give(mut map: HeaderMap) {
    let capacity = map.capacity();
    if capacity == 0 || capacity > MAX_POOLED_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_memory() {
        let mut map = take(12);
        assert!(map.capacity() >= 12);
        map.insert("x-a", HeaderValue::from_static("1"));
        let capacity = map.capacity();
        give(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity, "the pooled map was reused");
        // Asking for more than a pooled map holds grows it.
        give(again);
        assert!(take(40).capacity() >= 40);
    }

    #[test]
    fn oversized_maps_are_not_kept() {
        let big = HeaderMap::with_capacity(MAX_POOLED_CAPACITY * 2);
        give(big);
        assert!(take(1).capacity() <= MAX_POOLED_CAPACITY);
    }
}
