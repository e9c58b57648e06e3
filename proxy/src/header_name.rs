//! Header names read off the wire. `HeaderName::from_bytes` copies every name into a buffer,
//! lower-casing it byte by byte through a table, then matches the copy against each standard name,
//! and a name it does not know costs an allocation. Nearly every name a proxy sees is one of a few
//! dozen, standard or not: those are recognized here (by length, then eight bytes at a time with
//! the case of letters folded) and handed out as constants. Any other name goes to `from_bytes`.

use std::sync::LazyLock;

use http::header::{HeaderName, InvalidHeaderName};

/// The name `raw` spells: a known one without a copy, else whatever `HeaderName::from_bytes`
/// makes of it (the same name either way).
pub fn from_wire(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if let Some(names) = KNOWN.get(raw.len()).filter(|n| !n.is_empty()) {
        let mut buf = [0u8; LONGEST];
        if let Some(head) = buf.get_mut(..raw.len()) {
            head.copy_from_slice(raw);
            let raw = words(&buf);
            if let Some(k) = names.iter().find(|k| k.spelled_by(&raw)) {
                return Ok(k.name.clone());
            }
        }
    }
    HeaderName::from_bytes(raw)
}

/// A known name, and its bytes as words for comparing eight at a time.
struct Known {
    name: HeaderName,
    /// The name's bytes, zero beyond its end.
    word: [u64; WORDS],
    /// 0x20 at each letter of the name: a byte ORed with it is the letter only when it is that
    /// letter in either case. 0 elsewhere (`-`, digits, and beyond the end), where the byte must be
    /// exact.
    fold: [u64; WORDS],
}

impl Known {
    fn new(name: &'static str) -> Known {
        let mut bytes = [0u8; LONGEST];
        let mut fold = [0u8; LONGEST];
        for ((b, f), c) in bytes.iter_mut().zip(fold.iter_mut()).zip(name.bytes()) {
            *b = c;
            *f = if c.is_ascii_lowercase() { 0x20 } else { 0 };
        }
        Known {
            name: HeaderName::from_static(name),
            word: words(&bytes),
            fold: words(&fold),
        }
    }

    /// Whether `raw` (as words, zero beyond its end, of this name's length) spells this name.
    fn spelled_by(&self, raw: &[u64; WORDS]) -> bool {
        let differ = raw
            .iter()
            .zip(&self.fold)
            .zip(&self.word)
            .fold(0, |d, ((r, f), w)| d | ((r | f) ^ w));
        differ == 0
    }
}

const WORDS: usize = LONGEST / 8;

fn words(bytes: &[u8; LONGEST]) -> [u64; WORDS] {
    let mut out = [0u64; WORDS];
    for (w, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    out
}

/// The names recognized, the more common first: standard ones (which `from_static` makes the
/// same constants as `http::header`'s) and others that proxies and gRPC put on most messages.
const NAMES: [&str; 87] = [
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "date",
    "server",
    "cache-control",
    "etag",
    "last-modified",
    "accept-ranges",
    "transfer-encoding",
    "location",
    "vary",
    "set-cookie",
    "expires",
    "age",
    "via",
    "te",
    "upgrade",
    "expect",
    "origin",
    "referer",
    "authorization",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-range",
    "if-unmodified-since",
    "range",
    "content-encoding",
    "content-language",
    "content-location",
    "content-range",
    "content-disposition",
    "link",
    "allow",
    "pragma",
    "trailer",
    "forwarded",
    "retry-after",
    "www-authenticate",
    "proxy-authorization",
    "alt-svc",
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "content-security-policy",
    "upgrade-insecure-requests",
    "sec-websocket-key",
    "sec-websocket-accept",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "access-control-allow-origin",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-request-method",
    "access-control-request-headers",
    "keep-alive",
    "proxy-connection",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-envoy-upstream-service-time",
    "x-envoy-expected-rq-timeout-ms",
    "grpc-status",
    "grpc-message",
    "grpc-encoding",
    "grpc-accept-encoding",
    "grpc-timeout",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
];

/// The longest of [`NAMES`] (a multiple of 8).
const LONGEST: usize = 32;

/// [`NAMES`] by length.
static KNOWN: LazyLock<[Vec<Known>; LONGEST + 1]> = LazyLock::new(|| {
    let mut by_len: [Vec<Known>; LONGEST + 1] = std::array::from_fn(|_| Vec::new());
    for name in NAMES {
        if let Some(slot) = by_len.get_mut(name.len()) {
            slot.push(Known::new(name));
        }
    }
    by_len
});

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn every_name_is_known_under_its_length_as_from_bytes_makes_it() {
        let known: usize = KNOWN.iter().map(Vec::len).sum();
        assert_eq!(known, NAMES.len(), "a name longer than LONGEST is left out");
        for (len, names) in KNOWN.iter().enumerate() {
            for k in names {
                let n = &k.name;
                assert_eq!(n.as_str().len(), len, "{n}");
                assert_eq!(
                    HeaderName::from_bytes(n.as_str().as_bytes()).ok().as_ref(),
                    Some(n)
                );
            }
        }
    }

    #[test]
    fn a_known_name_is_matched_in_any_case_and_only_by_its_own_letters() {
        for name in NAMES {
            let upper = name.to_ascii_uppercase();
            assert_eq!(
                from_wire(upper.as_bytes()).ok(),
                HeaderName::from_bytes(name.as_bytes()).ok()
            );
            for i in 0..name.len() {
                for flip in [0x01u8, 0x20, 0x80] {
                    let mut raw = name.as_bytes().to_vec();
                    raw[i] ^= flip;
                    let ours = from_wire(&raw).map_err(|_| ());
                    let theirs = HeaderName::from_bytes(&raw).map_err(|_| ());
                    assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&raw));
                }
            }
        }
    }

    #[test]
    fn names_are_the_ones_from_bytes_makes_in_any_case() {
        for raw in [
            &b"Host"[..],
            b"CONTENT-LENGTH",
            b"content-type",
            b"X-Request-Id",
            b"Keep-Alive",
            b"x-custom-thing",
            b"Hosts",
            b"hos",
            b"",
            b"bad name",
            b"a\rb",
        ] {
            let ours = from_wire(raw).map_err(|_| ());
            let theirs = HeaderName::from_bytes(raw).map_err(|_| ());
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(raw));
        }
        // Only a letter's case folds: a byte that lower-cases to nothing known is not a match.
        assert!(from_wire(b"content\rlength").is_err());
        assert_eq!(from_wire(b"hOsT").ok(), Some(header::HOST));
    }
}
