//! The connection manager's request path and header checks, applied before routing as Envoy
//! applies them: `path_with_escaped_slashes_action` (`%2F` / `%5C`), `normalize_path` (RFC 3986
//! dot segments, unreserved characters decoded, other escapes in upper case), `merge_slashes`,
//! and `headers_with_underscores_action`.

use http::uri::PathAndQuery;
use http::HeaderMap;

/// `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    #[default]
    KeepUnchanged,
    RejectRequest,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    #[default]
    Allow,
    RejectRequest,
    DropHeader,
}

/// A connection manager's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub underscores: Underscores,
}

/// What to do with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Route it (with this path, when it changed).
    Continue(Option<PathAndQuery>),
    /// Answer 400 (a path that cannot be normalized, or escaped slashes refused).
    Reject,
    /// Answer 400 `Bad Request` (a header name with an underscore, refused as Envoy's codec
    /// refuses it).
    BadHeader,
    /// Answer with a redirect to this path (and query).
    Redirect(String),
}

impl PathRules {
    /// Whether any rule is on (otherwise requests are not looked at).
    pub fn any(&self) -> bool {
        *self != PathRules::default()
    }

    /// Check and rewrite a request's path and headers.
    pub fn apply(&self, path_and_query: &str, headers: &mut HeaderMap) -> Outcome {
        match self.underscores {
            Underscores::Allow => {}
            Underscores::RejectRequest => {
                if headers.keys().any(|k| k.as_str().contains('_')) {
                    return Outcome::BadHeader;
                }
            }
            Underscores::DropHeader => {
                let names: Vec<_> = headers
                    .keys()
                    .filter(|k| k.as_str().contains('_'))
                    .cloned()
                    .collect();
                for n in names {
                    headers.remove(n);
                }
            }
        }
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        let mut new = path.to_string();
        let mut redirect = false;
        if self.escaped_slashes != EscapedSlashes::KeepUnchanged {
            let unescaped = unescape_slashes(&new);
            if unescaped != new {
                match self.escaped_slashes {
                    EscapedSlashes::RejectRequest => return Outcome::Reject,
                    EscapedSlashes::UnescapeAndRedirect => redirect = true,
                    _ => {}
                }
                new = unescaped;
            }
        }
        if self.normalize {
            match canonical_path(&new) {
                Some(p) => new = p,
                None => return Outcome::Reject,
            }
        }
        if self.merge_slashes {
            new = merge_slashes(&new);
        }
        let full = format!("{new}{query}");
        if redirect {
            return Outcome::Redirect(full);
        }
        if new == path {
            return Outcome::Continue(None);
        }
        match PathAndQuery::try_from(full.as_str()) {
            Ok(pq) => Outcome::Continue(Some(pq)),
            Err(_) => Outcome::Reject,
        }
    }
}

/// `%2F` / `%2f` to `/` and `%5C` / `%5c` to `\`.
fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or("");
        match esc.to_ascii_uppercase().as_str() {
            "%2F" => {
                out.push('/');
                rest = &rest[i + 3..];
            }
            "%5C" => {
                out.push('\\');
                rest = &rest[i + 3..];
            }
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Collapse runs of `/`.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 normalization as a browser's URL canonicalizer does it: percent escapes of
/// unreserved characters decoded and the others in upper case, backslashes as slashes, then
/// `.` and `..` segments resolved. `None` for a path that is not absolute.
fn canonical_path(path: &str) -> Option<String> {
    if !path.starts_with('/') && !path.starts_with('\\') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = &path[i + 1..i + 3];
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(if b == b'\\' { '/' } else { b as char });
        i += 1;
    }
    // Dot segments (RFC 3986 5.2.4): a trailing `.` or `..` leaves a directory.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_dir = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_dir = n == last,
            ".." => {
                out.pop();
                trailing_dir = n == last;
            }
            s => {
                out.push(s);
                trailing_dir = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_dir || result.is_empty() {
        result.push('/');
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_as_rfc_3986_says() {
        assert_eq!(canonical_path("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(canonical_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(canonical_path("/../../x").as_deref(), Some("/x"));
        assert_eq!(
            canonical_path("/%7Euser/%2e%2E/%41%2f").as_deref(),
            Some("/A%2F")
        );
        assert_eq!(canonical_path("/a\\b").as_deref(), Some("/a/b"));
        assert_eq!(canonical_path("relative"), None);
        assert_eq!(merge_slashes("//a///b/"), "/a/b/");
        assert_eq!(unescape_slashes("/a%2Fb%5cc%41"), "/a/b\\c%41");
    }
}
