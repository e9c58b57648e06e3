//! `x-request-id` values: version-4 UUIDs made from the per-thread generator, so that generating
//! one costs no system call. Their bytes are cut from a per-thread buffer of a few dozen ids, so
//! that a request's id costs no trip to the allocator either.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;

use crate::weighted_pick::fast_random;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new version-4 UUID.
pub fn generate() -> HeaderValue {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&fast_random().to_be_bytes());
    raw[8..].copy_from_slice(&fast_random().to_be_bytes());
    // Version 4 in the 13th hex digit, RFC 4122 variant in the 17th.
    raw[6] = (raw[6] & 0x0f) | 0x40;
    raw[8] = (raw[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    for (digits, bytes) in [(0, 0..4), (9, 4..6), (14, 6..8), (19, 8..10), (24, 10..16)] {
        for (j, byte) in raw[bytes].iter().enumerate() {
            out[digits + 2 * j] = HEX[usize::from(byte >> 4)];
            out[digits + 2 * j + 1] = HEX[usize::from(byte & 0xf)];
        }
    }
    let bytes = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < out.len() {
            *ids = BytesMut::with_capacity(out.len() * IDS_PER_BUFFER);
        }
        ids.extend_from_slice(&out);
        ids.split().freeze()
    });
    // SAFETY: `from_maybe_shared_unchecked` requires UTF-8 and, unchecked, the bytes a header
    // value allows. `bytes` is the 36 bytes of `out`, each an ASCII hex digit or '-': both.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// Ids cut from one buffer; the buffer is freed when the last of them is dropped.
const IDS_PER_BUFFER: usize = 64;

thread_local! {
    static IDS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_v4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = generate();
            let s = id.to_str().unwrap().to_string();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            assert!(
                s.chars()
                    .enumerate()
                    .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }),
                "{s}"
            );
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn ids_cut_from_one_buffer_stay_as_they_were_made() {
        let ids: Vec<HeaderValue> = (0..3 * IDS_PER_BUFFER).map(|_| generate()).collect();
        let copies: Vec<String> = ids
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        // Later ids, from the same buffer and from new ones, leave the earlier ones untouched.
        let more: Vec<HeaderValue> = (0..IDS_PER_BUFFER).map(|_| generate()).collect();
        for (id, copy) in ids.iter().zip(&copies) {
            assert_eq!(id.to_str().unwrap(), copy);
        }
        assert!(more
            .iter()
            .all(|m| !copies.contains(&m.to_str().unwrap().to_string())));
    }
}
