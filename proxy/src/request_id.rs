//! `x-request-id` values: version-4 UUIDs made from the per-thread generator, so that generating
//! one costs no system call.

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
    // Every byte is an ASCII hex digit or '-', which is always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
        "00000000-0000-4000-8000-000000000000",
    ))
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
}
