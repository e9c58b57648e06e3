//! Envoy `DataSource` values (`filename`, `inline_string`, `inline_bytes`), as canonical JSON.

use serde_json::Value;
use sluice_config::FieldError;

/// Read a `DataSource`. Files are read when the configuration is compiled, so a reload picks up
/// changed files (certificates, response bodies).
pub fn read(ds: &Value, path: &str) -> Result<Vec<u8>, FieldError> {
    if let Some(text) = ds.get("inline_string").and_then(Value::as_str) {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(b64) = ds.get("inline_bytes").and_then(Value::as_str) {
        return decode_base64(b64)
            .ok_or_else(|| FieldError::new(format!("{path}.inline_bytes"), "invalid base64"));
    }
    if let Some(file) = ds.get("filename").and_then(Value::as_str) {
        return std::fs::read(file)
            .map_err(|e| FieldError::new(format!("{path}.filename"), format!("{file}: {e}")));
    }
    Err(FieldError::new(
        path,
        "one of filename, inline_string, inline_bytes is required",
    ))
}

/// Standard or URL-safe base64, padding optional (protobuf JSON `bytes`).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(
            read(&serde_json::json!({"inline_string": "x"}), "p").unwrap(),
            b"x"
        );
        assert_eq!(
            read(&serde_json::json!({"inline_bytes": "aGk="}), "p").unwrap(),
            b"hi"
        );
        let e = read(&serde_json::json!({"filename": "/nonexistent/file"}), "p").unwrap_err();
        assert_eq!(e.path, "p.filename");
        assert!(read(&serde_json::json!({}), "p").is_err());
    }
}
