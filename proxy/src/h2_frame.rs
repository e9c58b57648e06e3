//! HTTP/2 frames (RFC 9113 §4 and §6): the frame header, the constants of each type, and the
//! encoders of the frames the server sends.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub const HEAD_LEN: usize = 9;

/// The largest frame payload accepted: the protocol's default `SETTINGS_MAX_FRAME_SIZE`, which this
/// server does not raise.
pub const MAX_FRAME: usize = 16_384;

/// The flow-control window every stream and the connection start with (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;

/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Setting identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHead {
    /// The header at the start of `buf`, if nine bytes are there.
    pub fn parse(buf: &[u8]) -> Option<FrameHead> {
        let b: &[u8; HEAD_LEN] = buf.get(..HEAD_LEN)?.try_into().ok()?;
        Some(FrameHead {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A frame header's bytes.
pub fn head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEAD_LEN] {
    let id = stream.to_be_bytes();
    [
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        id[0],
        id[1],
        id[2],
        id[3],
    ]
}

/// Append a frame header.
pub fn put_head(buf: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    buf.extend_from_slice(&head(len, kind, flags, stream));
}

/// Append a SETTINGS frame with these settings.
pub fn put_settings(buf: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(buf, settings.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in settings {
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn put_settings_ack(buf: &mut Vec<u8>) {
    put_head(buf, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn put_window_update(buf: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(buf, 4, kind::WINDOW_UPDATE, 0, stream);
    buf.extend_from_slice(&increment.to_be_bytes());
}

pub fn put_rst_stream(buf: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(buf, 4, kind::RST_STREAM, 0, stream);
    buf.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn put_goaway(buf: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    put_head(buf, 8, kind::GOAWAY, 0, 0);
    buf.extend_from_slice(&last_stream.to_be_bytes());
    buf.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn put_ping_ack(buf: &mut Vec<u8>, payload: &[u8]) {
    put_head(buf, payload.len(), kind::PING, flag::ACK, 0);
    buf.extend_from_slice(payload);
}

/// The content of a DATA or HEADERS payload without its padding (`PADDED` flag); `None` when the
/// padding is longer than the payload allows (a `PROTOCOL_ERROR`).
pub fn unpadded(payload: &[u8], head: &FrameHead) -> Option<std::ops::Range<usize>> {
    if !head.has(flag::PADDED) {
        return Some(0..payload.len());
    }
    let pad = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(pad)?;
    (end >= 1).then_some(1..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_ignore_the_reserved_bit() {
        let mut buf = Vec::new();
        put_head(&mut buf, 0x01_02_03, kind::HEADERS, flag::END_HEADERS, 7);
        let mut head = FrameHead::parse(&buf).unwrap();
        assert_eq!(
            head,
            FrameHead {
                len: 0x01_02_03,
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 7
            }
        );
        buf[5] |= 0x80;
        head = FrameHead::parse(&buf).unwrap();
        assert_eq!(head.stream, 7);
        assert_eq!(FrameHead::parse(&buf[..8]), None);
    }

    #[test]
    fn padding_is_removed_or_refused() {
        let head = |flags| FrameHead {
            len: 0,
            kind: kind::DATA,
            flags,
            stream: 1,
        };
        assert_eq!(unpadded(b"abc", &head(0)), Some(0..3));
        // Pad length 2: one byte of data, two of padding.
        assert_eq!(unpadded(&[2, b'x', 0, 0], &head(flag::PADDED)), Some(1..2));
        assert_eq!(unpadded(&[3, b'x', 0, 0], &head(flag::PADDED)), Some(1..1));
        assert_eq!(unpadded(&[4, b'x', 0, 0], &head(flag::PADDED)), None);
        assert_eq!(unpadded(&[], &head(flag::PADDED)), None);
    }
}
