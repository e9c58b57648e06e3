//! HPACK (RFC 7541), the header compression of HTTP/2, as the downstream HTTP/2 server needs it.
//!
//! The decoder keeps its dynamic table as fields already checked and converted to `http` types, so
//! a header sent again by index (what clients do for every repeated header) costs a reference
//! count, not a parse or an allocation. A name or value HTTP does not allow still enters the table
//! (the table must stay in step with the peer's) but decodes as [`Field::Invalid`], which makes the
//! message carrying it malformed.
//!
//! The encoder never adds to the peer's dynamic table: responses are written as literals without
//! indexing, `:status` by its static index where it has one. That keeps no per-connection encoder
//! state and is always valid whatever table size the peer announces.

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

/// The pseudo-header fields of RFC 9113 §8.3 (and `:protocol` of RFC 8441).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
    Protocol,
}

impl Pseudo {
    fn from_name(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":method" => Pseudo::Method,
            b":scheme" => Pseudo::Scheme,
            b":authority" => Pseudo::Authority,
            b":path" => Pseudo::Path,
            b":status" => Pseudo::Status,
            b":protocol" => Pseudo::Protocol,
            _ => return None,
        })
    }

    /// Length of the field's name, for the sizes of RFC 7541 §4.1 and RFC 9113 §6.5.2.
    pub fn name_len(self) -> usize {
        match self {
            Pseudo::Method => 7,
            Pseudo::Scheme => 7,
            Pseudo::Authority => 10,
            Pseudo::Path => 5,
            Pseudo::Status => 7,
            Pseudo::Protocol => 9,
        }
    }
}

/// One decoded header field.
#[derive(Debug, Clone)]
pub enum Field {
    Pseudo(Pseudo, Bytes),
    Header(HeaderName, HeaderValue),
    /// A name or value that HTTP/2 does not allow: upper case or other bytes not allowed in a
    /// name, an unknown pseudo-header, a control character in a value.
    Invalid,
}

/// Why a header block could not be decoded. Any of these is a connection error
/// (`COMPRESSION_ERROR`): the decoder's table can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerOverflow,
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    #[error("invalid Huffman-coded string")]
    Huffman,
    #[error("dynamic table size {0} above the announced limit")]
    TableSize(usize),
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
}

/// The name part of a table entry.
#[derive(Debug, Clone)]
enum Name {
    Pseudo(Pseudo),
    Header(HeaderName),
    Invalid(usize),
}

impl Name {
    fn parse(raw: &[u8]) -> Name {
        if raw.first() == Some(&b':') {
            return match Pseudo::from_name(raw) {
                Some(p) => Name::Pseudo(p),
                None => Name::Invalid(raw.len()),
            };
        }
        // HTTP/2 field names are lower case (RFC 9113 §8.2.1); `HeaderName` would fold them.
        if raw.iter().any(u8::is_ascii_uppercase) {
            return Name::Invalid(raw.len());
        }
        match crate::header_name::from_wire(raw) {
            Ok(n) => Name::Header(n),
            Err(_) => Name::Invalid(raw.len()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Name::Pseudo(p) => p.name_len(),
            Name::Header(h) => h.as_str().len(),
            Name::Invalid(n) => *n,
        }
    }

    fn with_value(&self, value: Bytes) -> Field {
        match self {
            Name::Pseudo(p) => Field::Pseudo(*p, value),
            Name::Header(h) => match HeaderValue::from_maybe_shared(value) {
                Ok(v) => Field::Header(h.clone(), v),
                Err(_) => Field::Invalid,
            },
            Name::Invalid(_) => Field::Invalid,
        }
    }
}

/// A table entry: its name (for literals that reuse it), the field as decoded, and its size.
#[derive(Debug, Clone)]
struct Entry {
    name: Name,
    field: Field,
    size: usize,
}

impl Entry {
    fn new(name: Name, value: Bytes) -> Entry {
        let size = name.len() + value.len() + 32;
        let field = name.with_value(value);
        Entry { name, field, size }
    }
}

/// Entries of the static table (RFC 7541 Appendix A); index 1 is the first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

fn static_table() -> &'static [Entry] {
    static TABLE: OnceLock<Vec<Entry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        STATIC
            .iter()
            .map(|(n, v)| Entry::new(Name::parse(n.as_bytes()), Bytes::from_static(v.as_bytes())))
            .collect()
    })
}

/// The HPACK decoder of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<Entry>,
    size: usize,
    /// The table size the encoder chose (at most `limit`).
    max_size: usize,
    /// `SETTINGS_HEADER_TABLE_SIZE` as announced to the peer.
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(4096)
    }
}

impl Decoder {
    /// A decoder whose peer may use a dynamic table of up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decode a whole header block (HEADERS and its CONTINUATIONs), passing each field to `emit`.
    pub fn decode(&mut self, block: &Bytes, mut emit: impl FnMut(Field)) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields = false;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                // Indexed field.
                let (index, n) = integer(&block[pos..], 7)?;
                pos += n;
                emit(self.entry(index)?.field.clone());
                fields = true;
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                let (entry, n) = self.literal(block, pos, 6)?;
                pos += n;
                emit(entry.field.clone());
                self.insert(entry);
                fields = true;
            } else if first & 0x20 != 0 {
                // Dynamic table size update: only before the first field of a block.
                if fields {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, n) = integer(&block[pos..], 5)?;
                pos += n;
                if size > self.limit {
                    return Err(HpackError::TableSize(size));
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let (entry, n) = self.literal(block, pos, 4)?;
                pos += n;
                emit(entry.field);
                fields = true;
            }
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<&Entry, HpackError> {
        let statics = static_table();
        match index {
            0 => Err(HpackError::BadIndex(0)),
            i if i <= statics.len() => Ok(&statics[i - 1]),
            i => self
                .dynamic
                .get(i - statics.len() - 1)
                .ok_or(HpackError::BadIndex(i)),
        }
    }

    /// A literal field at `pos` whose name index has `prefix` bits; the entry and its length.
    fn literal(&self, block: &Bytes, pos: usize, prefix: u8) -> Result<(Entry, usize), HpackError> {
        let (index, mut n) = integer(&block[pos..], prefix)?;
        let name = if index == 0 {
            let (raw, m) = string(block, pos + n)?;
            n += m;
            Name::parse(&raw)
        } else {
            self.entry(index)?.name.clone()
        };
        let (value, m) = string(block, pos + n)?;
        Ok((Entry::new(name, value), n + m))
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            // An entry larger than the table empties it and is not added (RFC 7541 §4.4).
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.evict(entry.size);
        self.size += entry.size;
        self.dynamic.push_front(entry);
    }

    /// Evict the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.dynamic.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }
}

/// An integer with an `prefix`-bit prefix (RFC 7541 §5.1); the value and the bytes it took.
fn integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u8 << prefix) - 1;
    let first = buf.first().ok_or(HpackError::Truncated)? & mask;
    if first < mask {
        return Ok((first as usize, 1));
    }
    let mut value = mask as usize;
    let mut shift = 0u32;
    for (i, &b) in buf[1..].iter().enumerate() {
        // Four continuation bytes reach 2^28, beyond any size this decoder accepts.
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok((value, i + 2));
        }
        shift += 7;
    }
    Err(HpackError::Truncated)
}

/// A string literal at `pos`; raw strings share the block's memory.
fn string(block: &Bytes, pos: usize) -> Result<(Bytes, usize), HpackError> {
    let rest = block.get(pos..).ok_or(HpackError::Truncated)?;
    let huffman = rest.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, n) = integer(rest, 7)?;
    let end = n.checked_add(len).ok_or(HpackError::Truncated)?;
    if end > rest.len() {
        return Err(HpackError::Truncated);
    }
    let raw = block.slice(pos + n..pos + end);
    if huffman {
        Ok((Bytes::from(huffman_decode(&raw)?), end))
    } else {
        Ok((raw, end))
    }
}

/// Code lengths of the HPACK Huffman code (RFC 7541 Appendix B), symbols 0 to 256 (EOS). The
/// code is canonical, so the lengths determine the codes.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// A child in the decoding tree: a node index, or a symbol when [`LEAF`] is set.
const LEAF: u16 = 0x8000;
const EOS: u16 = 256;

/// The Huffman code as a binary tree: `tree[node][bit]`. Node 0 is the root; 0 as a child means
/// no code takes that branch.
fn huffman_tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        // Canonical codes: by length, then by symbol, each the previous plus one.
        let mut order: Vec<u16> = (0..=EOS).collect();
        order.sort_by_key(|&s| (HUFFMAN_LENGTHS[s as usize], s));
        let mut tree = vec![[0u16; 2]];
        let mut code: u32 = 0;
        let mut len: u8 = 0;
        for (i, &sym) in order.iter().enumerate() {
            let l = HUFFMAN_LENGTHS[sym as usize];
            if i > 0 {
                code += 1;
            }
            code <<= l - len;
            len = l;
            let mut node = 0usize;
            for bit in (0..l).rev() {
                let b = ((code >> bit) & 1) as usize;
                if bit == 0 {
                    tree[node][b] = LEAF | sym;
                } else {
                    if tree[node][b] == 0 {
                        tree.push([0, 0]);
                        tree[node][b] = (tree.len() - 1) as u16;
                    }
                    node = tree[node][b] as usize;
                }
            }
        }
        tree
    })
}

/// Decode a Huffman-coded string. Padding must be at most 7 bits, all ones (a prefix of EOS), and
/// EOS itself must not appear (RFC 7541 §5.2).
pub fn huffman_decode(data: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = huffman_tree();
    let mut out = Vec::with_capacity(data.len() * 8 / 5);
    let mut node = 0usize;
    let mut pending_bits = 0u32;
    let mut all_ones = true;
    for &byte in data {
        for shift in (0..8).rev() {
            let bit = (byte >> shift) & 1;
            pending_bits += 1;
            all_ones &= bit == 1;
            let next = tree[node][bit as usize];
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == EOS {
                    return Err(HpackError::Huffman);
                }
                out.push(sym as u8);
                node = 0;
                pending_bits = 0;
                all_ones = true;
            } else if next == 0 {
                return Err(HpackError::Huffman);
            } else {
                node = next as usize;
            }
        }
    }
    if pending_bits > 7 || !all_ones {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

/// Append an integer with a `prefix`-bit prefix; `flags` fills the bits above the prefix.
fn put_integer(buf: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        buf.push(flags | value as u8);
        return;
    }
    buf.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        buf.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    buf.push(rest as u8);
}

fn put_string(buf: &mut Vec<u8>, s: &[u8]) {
    put_integer(buf, s.len(), 7, 0);
    buf.extend_from_slice(s);
}

/// Append `:status`: by static index where the table has it, else as a literal on its name.
pub fn encode_status(buf: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        buf.push(0x80 | index);
        return;
    }
    // Literal without indexing, name `:status` (index 8), three digits.
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    put_integer(buf, 8, 4, 0x00);
    put_string(buf, &digits);
}

/// Append a header field as a literal without indexing (never indexed if marked sensitive).
pub fn encode_header(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.push(if value.is_sensitive() { 0x10 } else { 0x00 });
    put_string(buf, name.as_str().as_bytes());
    put_string(buf, value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Vec<String> {
        let mut out = Vec::new();
        d.decode(&hex(block), |f| {
            out.push(match f {
                Field::Pseudo(p, v) => format!("{p:?}={}", String::from_utf8_lossy(&v)),
                Field::Header(n, v) => format!("{n}={}", v.to_str().unwrap()),
                Field::Invalid => "invalid".to_string(),
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        let mut d = Decoder::default();
        assert_eq!(
            decode(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
            [
                "Method=GET",
                "Scheme=http",
                "Path=/",
                "Authority=www.example.com"
            ]
        );
        assert_eq!(d.size, 57);
        assert_eq!(
            decode(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865"),
            [
                "Method=GET",
                "Scheme=http",
                "Path=/",
                "Authority=www.example.com",
                "cache-control=no-cache"
            ]
        );
        assert_eq!(d.size, 110);
        assert_eq!(
            decode(
                &mut d,
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"
            ),
            [
                "Method=GET",
                "Scheme=https",
                "Path=/index.html",
                "Authority=www.example.com",
                "custom-key=custom-value"
            ]
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::default();
        assert_eq!(
            decode(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
            [
                "Method=GET",
                "Scheme=http",
                "Path=/",
                "Authority=www.example.com"
            ]
        );
        assert_eq!(
            decode(&mut d, "8286 84be 5886 a8eb 1064 9cbf"),
            [
                "Method=GET",
                "Scheme=http",
                "Path=/",
                "Authority=www.example.com",
                "cache-control=no-cache"
            ]
        );
        assert_eq!(
            decode(
                &mut d,
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            ),
            [
                "Method=GET",
                "Scheme=https",
                "Path=/index.html",
                "Authority=www.example.com",
                "custom-key=custom-value"
            ]
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn eviction_follows_the_table_size() {
        // A table of 110 bytes holds two of the C.3 entries; the third evicts the oldest.
        let mut d = Decoder::new(110);
        decode(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        decode(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865");
        decode(
            &mut d,
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        );
        assert_eq!(d.dynamic.len(), 2);
        assert_eq!(d.size, 107);
        // Index 63 (the oldest kept) is cache-control; 64 is gone.
        assert_eq!(decode(&mut d, "bf"), ["cache-control=no-cache"]);
        assert_eq!(d.decode(&hex("c0"), |_| {}), Err(HpackError::BadIndex(64)));
        // A size update to 0 empties the table; above the limit is an error.
        decode(&mut d, "20");
        assert_eq!(d.dynamic.len(), 0);
        assert_eq!(
            d.decode(&hex("3f f0 01"), |_| {}),
            Err(HpackError::TableSize(271))
        );
        assert_eq!(
            d.decode(&hex("82 20"), |_| {}),
            Err(HpackError::LateSizeUpdate)
        );
    }

    #[test]
    fn malformed_fields_decode_as_invalid_but_keep_the_table_in_step() {
        let mut d = Decoder::default();
        // Literal with indexing, new name "X-Up" (upper case), value "1".
        let fields = decode(&mut d, "40 04 582d 5570 01 31");
        assert_eq!(fields, ["invalid"]);
        assert_eq!(d.dynamic.len(), 1);
        assert_eq!(decode(&mut d, "be"), ["invalid"]);
        // An unknown pseudo-header, and a value with a line feed.
        assert_eq!(decode(&mut d, "00 04 3a78 7878 01 31"), ["invalid"]);
        assert_eq!(decode(&mut d, "0f 01 02 610a"), ["invalid"]);
    }

    #[test]
    fn truncated_and_bad_input_is_an_error() {
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(&hex("40 0a 6375"), |_| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(&hex("ff ff ff"), |_| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(&hex("ff ff ff ff ff ff 01"), |_| {}),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(d.decode(&hex("80"), |_| {}), Err(HpackError::BadIndex(0)));
        // EOS inside a string, and padding that is not all ones.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::Huffman)
        );
        assert_eq!(huffman_decode(&[0x00]), Err(HpackError::Huffman));
        assert_eq!(huffman_decode(&hex("a8eb 1064 9cbf")).unwrap(), b"no-cache");
    }

    #[test]
    fn encoded_responses_decode_back() {
        let mut buf = Vec::new();
        encode_status(&mut buf, 200);
        encode_status(&mut buf, 503);
        let long = HeaderValue::from_str(&"v".repeat(300)).unwrap();
        encode_header(&mut buf, &http::header::CONTENT_TYPE, &long);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&Bytes::from(buf), |f| out.push(f)).unwrap();
        assert!(matches!(&out[0], Field::Pseudo(Pseudo::Status, v) if v == "200"));
        assert!(matches!(&out[1], Field::Pseudo(Pseudo::Status, v) if v == "503"));
        assert!(matches!(&out[2], Field::Header(n, v) if n == "content-type" && *v == long));
        assert_eq!(d.dynamic.len(), 0);
    }
}
