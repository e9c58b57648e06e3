//! `x-request-id` values: version-4 UUIDs made from the per-thread generator, so that generating
//! one costs no system call.

use http::HeaderValue;

use crate::weighted_pick::fast_random;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new version-4 UUID.
pub fn generate() -> HeaderValue {
    let a = fast_random();
    let mut b = fast_random();
    // Version 4 in the 13th hex digit, RFC 4122 variant in the 17th.
    let a = (a & !0xF000) | 0x4000;
    b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let mut out = [0u8; 36];
    let mut i = 0;
    for word in [a, b] {
        for k in (0..16).rev() {
            if matches!(i, 8 | 13 | 18 | 23) {
                out[i] = b'-';
                i += 1;
            }
            out[i] = HEX[((word >> (k * 4)) & 0xF) as usize];
            i += 1;
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
