//! Header additions and removals (`request_headers_to_add`, `..._to_remove`, and the response
//! equivalents) at weighted-cluster, route, virtual-host and route-configuration level.
//!
//! Levels are applied from the most specific to the least specific, as Envoy does by default, so an
//! overwrite at the route-configuration level wins over one at the route level. At each level the
//! removals run before the additions. Values may use `%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`, `%DOWNSTREAM_LOCAL_ADDRESS%`, `%PROTOCOL%`,
//! `%UPSTREAM_HOST%` (responses only) and `%REQ(NAME?ALTERNATIVE):MAX%` (a request header: in
//! responses, from the request as sent upstream); `%%` is a literal `%`.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

/// What to do when the header already exists (`HeaderValueOption.append_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    Literal(String),
    RemoteAddress,
    RemoteAddressWithoutPort,
    LocalAddress,
    Protocol,
    UpstreamHost,
    /// `%REQ(NAME?ALTERNATIVE):MAX%`: a request header's first value.
    RequestHeader {
        name: HeaderName,
        alternative: Option<HeaderName>,
        max_len: Option<usize>,
    },
}

/// A header value, literal or with substitutions.
#[derive(Debug, Clone)]
pub enum HeaderTemplate {
    Literal(HeaderValue),
    Parts(Vec<ValuePart>),
}

/// Values substituted into templates.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub protocol: &'a str,
    pub upstream_host: Option<SocketAddr>,
    /// The request's headers as sent upstream, for `%REQ(...)%` in response headers (request
    /// headers read the message they are added to).
    pub request: Option<&'a HeaderMap>,
}

impl HeaderTemplate {
    /// Parse an Envoy header value with `%VAR%` substitutions (without `%REQ(...)%`).
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::parse_for(value, false)
    }

    /// Parse a header value; `request_side` allows `%REQ(...)%`, which reads the request's own
    /// headers.
    pub fn parse_for(value: &str, request_side: bool) -> Result<Self, String> {
        if !value.contains('%') {
            return HeaderValue::from_str(value)
                .map(HeaderTemplate::Literal)
                .map_err(|_| format!("invalid header value `{value}`"));
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = value;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let Some(end) = rest.find('%') else {
                return Err(format!("unterminated `%` in header value `{value}`"));
            };
            let var = &rest[..end];
            rest = &rest[end + 1..];
            let part = match var {
                "DOWNSTREAM_REMOTE_ADDRESS" => ValuePart::RemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => ValuePart::RemoteAddressWithoutPort,
                "DOWNSTREAM_LOCAL_ADDRESS" => ValuePart::LocalAddress,
                "PROTOCOL" => ValuePart::Protocol,
                "UPSTREAM_HOST" => ValuePart::UpstreamHost,
                other if other.starts_with("REQ(") && request_side => request_header(other)?,
                other => return Err(format!("header value variable %{other}% not supported")),
            };
            if !lit.is_empty() {
                parts.push(ValuePart::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(ValuePart::Literal(lit));
        }
        Ok(HeaderTemplate::Parts(parts))
    }

    /// The value for a message whose headers (before this level's additions) are `headers`.
    fn render(&self, ctx: &RequestContext<'_>, headers: &HeaderMap) -> Option<HeaderValue> {
        match self {
            HeaderTemplate::Literal(v) => Some(v.clone()),
            HeaderTemplate::Parts(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        ValuePart::Literal(l) => s.push_str(l),
                        ValuePart::RemoteAddress => s.push_str(&ctx.remote.to_string()),
                        ValuePart::RemoteAddressWithoutPort => {
                            s.push_str(&ctx.remote.ip().to_string())
                        }
                        ValuePart::LocalAddress => s.push_str(&ctx.local.to_string()),
                        ValuePart::Protocol => s.push_str(ctx.protocol),
                        ValuePart::UpstreamHost => {
                            if let Some(u) = ctx.upstream_host {
                                s.push_str(&u.to_string())
                            }
                        }
                        ValuePart::RequestHeader {
                            name,
                            alternative,
                            max_len,
                        } => {
                            let headers = ctx.request.unwrap_or(headers);
                            let v = headers
                                .get(name)
                                .or_else(|| alternative.as_ref().and_then(|a| headers.get(a)))
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            let end = max_len.map_or(v.len(), |m| m.min(v.len()));
                            // Cut on a character boundary.
                            let end = (0..=end)
                                .rev()
                                .find(|&i| v.is_char_boundary(i))
                                .unwrap_or(0);
                            s.push_str(&v[..end]);
                        }
                    }
                }
                HeaderValue::from_str(&s).ok()
            }
        }
    }
}

/// `REQ(NAME?ALTERNATIVE):MAX` (the text between the `%`s).
fn request_header(var: &str) -> Result<ValuePart, String> {
    let bad = || format!("header value variable %{var}% is malformed");
    let rest = var.strip_prefix("REQ(").ok_or_else(bad)?;
    let (inside, after) = rest.split_once(')').ok_or_else(bad)?;
    let max_len = match after {
        "" => None,
        m => Some(
            m.strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(bad)?,
        ),
    };
    let (main, alternative) = match inside.split_once('?') {
        Some((m, a)) => (m, Some(a)),
        None => (inside, None),
    };
    let name = |n: &str| {
        if n.starts_with(':') {
            return Err(format!(
                "header value variable %{var}%: pseudo-header {n} not supported"
            ));
        }
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| bad())
    };
    Ok(ValuePart::RequestHeader {
        name: name(main)?,
        alternative: alternative.map(name).transpose()?,
        max_len,
    })
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: HeaderTemplate,
    pub action: AppendAction,
    pub keep_empty: bool,
}

/// The additions and removals of one level.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Nothing to do at this level.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Some value here reads a request header (`%REQ(...)%`).
    pub fn reads_request(&self) -> bool {
        self.add.iter().any(|a| match &a.value {
            HeaderTemplate::Parts(parts) => parts
                .iter()
                .any(|p| matches!(p, ValuePart::RequestHeader { .. })),
            HeaderTemplate::Literal(_) => false,
        })
    }

    /// Apply this level to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &RequestContext<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for add in &self.add {
            let Some(value) = add.value.render(ctx, headers) else {
                continue;
            };
            if value.is_empty() && !add.keep_empty {
                continue;
            }
            let exists = headers.contains_key(&add.name);
            match add.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(add.name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !exists {
                        headers.insert(add.name.clone(), value);
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(add.name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if exists {
                        headers.insert(add.name.clone(), value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            remote: "10.1.2.3:4567".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            protocol: "HTTP/1.1",
            upstream_host: None,
            request: None,
        }
    }

    fn add(name: &str, value: &str, action: AppendAction) -> HeaderAdd {
        HeaderAdd {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value: HeaderTemplate::parse(value).unwrap(),
            action,
            keep_empty: false,
        }
    }

    #[test]
    fn actions() {
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        h.insert("gone", "x".parse().unwrap());
        let ops = HeaderOps {
            add: vec![
                add("a", "2", AppendAction::AppendIfExistsOrAdd),
                add("b", "1", AppendAction::AddIfAbsent),
                add("b", "2", AppendAction::AddIfAbsent),
                add("c", "1", AppendAction::OverwriteIfExists),
                add("d", "1", AppendAction::OverwriteIfExistsOrAdd),
                add("d", "2", AppendAction::OverwriteIfExistsOrAdd),
                add("e", "", AppendAction::OverwriteIfExistsOrAdd),
            ],
            remove: vec![HeaderName::from_static("gone")],
        };
        ops.apply(&mut h, &ctx());
        assert_eq!(h.get_all("a").iter().count(), 2);
        assert_eq!(h["b"], "1");
        assert!(!h.contains_key("c"));
        assert_eq!(h["d"], "2");
        assert!(
            !h.contains_key("e"),
            "empty values are dropped unless keep_empty_value"
        );
        assert!(!h.contains_key("gone"));
    }

    #[test]
    fn templates() {
        let mut h = HeaderMap::new();
        let ops = HeaderOps {
            add: vec![add(
                "x-client",
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%% %PROTOCOL%",
                AppendAction::OverwriteIfExistsOrAdd,
            )],
            remove: vec![],
        };
        ops.apply(&mut h, &ctx());
        assert_eq!(h["x-client"], "10.1.2.3 100% HTTP/1.1");
        assert!(HeaderTemplate::parse("%REQ(x)%").is_err());
        assert!(HeaderTemplate::parse("%oops").is_err());
    }
}
