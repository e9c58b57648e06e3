//! Access logs of an HTTP connection manager (`access_log`): Envoy's stdout, stderr and file
//! loggers, with Envoy's default format, text formats and JSON formats, and the status-code,
//! duration, response-flag, header, not-health-check, `and` and `or` filters.
//!
//! A connection manager with access logs gives each request a [`LogSlot`], carried in the
//! request's extensions, which routing fills in as it decides: the response flag, the upstream
//! host and cluster, the route's name, and the request head as sent upstream (Envoy's `%REQ(...)%`
//! reads the request after its filters and router changed it: generated ids, `x-forwarded-for`,
//! rewritten paths and hosts). The response body then carries a [`LogEntry`] that counts the bytes
//! sent and, when the body ends or is dropped (a client that goes away is logged too), renders one
//! line per access log whose filter admits the request and appends it to the log's
//! [`Sink`](crate::access_log_sink::Sink), written out within a second. A connection manager without access logs pays one
//! field test per request.
//!
//! Command operators: `START_TIME` (Envoy's default format, or a `strftime`-style one with `%s`,
//! `%f`/`%Nf` and `%ENS`), `REQ(H?ALT):N`, `RESP(H?ALT):N` (pseudo-headers included), `PROTOCOL`,
//! `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`, `BYTES_RECEIVED`, `BYTES_SENT`,
//! `DURATION`, `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `DOWNSTREAM_REMOTE_ADDRESS`(`_WITHOUT_PORT`),
//! `DOWNSTREAM_DIRECT_REMOTE_ADDRESS`(`_WITHOUT_PORT`), `DOWNSTREAM_REMOTE_PORT`,
//! `DOWNSTREAM_LOCAL_ADDRESS`(`_WITHOUT_PORT`), `DOWNSTREAM_LOCAL_PORT`, `REQUESTED_SERVER_NAME`,
//! `ROUTE_NAME`, `HOSTNAME`; `UPSTREAM_LOCAL_ADDRESS`, `UPSTREAM_TRANSPORT_FAILURE_REASON` and
//! `CONNECTION_TERMINATION_DETAILS` are always `-`; `%%` is a `%`. Any other operator refuses the
//! configuration.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method, Version};

use crate::access_log_sink::Sink;
use crate::matcher::{HeaderMatcher, RequestView};
use crate::server::Flag;

/// Envoy's format when an access log names none.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The access logs of one connection manager.
#[derive(Debug)]
pub struct AccessLogs {
    pub logs: Vec<AccessLog>,
    /// A format reads `REQUESTED_SERVER_NAME`: TLS connections keep their server name.
    pub reads_tls: bool,
}

/// One `access_log` entry.
#[derive(Debug)]
pub struct AccessLog {
    pub filter: Option<LogFilter>,
    pub format: LogFormat,
    pub sink: Arc<Sink>,
}

/// How a line is laid out.
#[derive(Debug)]
pub enum LogFormat {
    /// A format string; `omit_empty` writes nothing (rather than `-`) for an absent value.
    Text { parts: Vec<Part>, omit_empty: bool },
    /// A JSON object per line (`json_format`); `omit_empty` leaves out absent and empty values.
    Json {
        fields: Vec<(String, JsonField)>,
        omit_empty: bool,
    },
}

/// A piece of a format string.
#[derive(Debug, Clone)]
pub enum Part {
    Literal(String),
    Command(Command, Option<usize>),
}

/// A value of a JSON format.
#[derive(Debug, Clone)]
pub enum JsonField {
    /// A number, boolean or null of the configuration, written as it is.
    Constant(serde_json::Value),
    /// A string that is one command operator: written typed (numbers as numbers, absent as null).
    Command(Command, Option<usize>),
    /// Any other string: the text format's rendering, as a JSON string.
    Text(Vec<Part>),
    Object(Vec<(String, JsonField)>),
}

/// Where a header operator looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

/// A command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Envoy's default layout, or a `strftime`-style one.
    StartTime(Option<Vec<TimePart>>),
    Request(HeaderKey, Option<HeaderKey>),
    Response(HeaderKey, Option<HeaderKey>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    RemoteAddress,
    RemoteAddressWithoutPort,
    RemotePort,
    LocalAddress,
    LocalAddressWithoutPort,
    LocalPort,
    RequestedServerName,
    RouteName,
    Hostname,
    /// Known to Envoy, unknown to Sluice: always `-`.
    Unknown,
}

/// A piece of a `START_TIME(...)` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimePart {
    Literal(String),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    DayOfYear,
    Hour,
    Minute,
    Second,
    /// Seconds with this many decimals (`%E3S`).
    SecondFraction(usize),
    /// This many digits of the second's fraction (`%3f`; `%f` is 9).
    Fraction(usize),
    Epoch,
    MonthName,
    WeekdayName,
    /// `%z`: `+0000` (times are UTC).
    Offset,
    /// `%Z`: `UTC`.
    Zone,
}

/// An access log filter (`AccessLog.filter`).
#[derive(Debug)]
pub enum LogFilter {
    Status(Comparison),
    Duration(Comparison),
    NotHealthCheck,
    /// `response_flag_filter`: any of these flags (any flag at all when empty).
    ResponseFlags(Vec<String>),
    Header(Box<HeaderMatcher>),
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
}

/// `ComparisonFilter`.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub op: CompareOp,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Comparison {
    fn admits(&self, v: u64) -> bool {
        match self.op {
            CompareOp::Eq => v == self.value,
            CompareOp::Ge => v >= self.value,
            CompareOp::Le => v <= self.value,
            CompareOp::Ne => v != self.value,
        }
    }
}

// ---- parsing -------------------------------------------------------------------------------

impl LogFormat {
    /// A text format (`text_format`, `text_format_source`, the file logger's `format`).
    pub fn text(format: &str, omit_empty: bool) -> Result<LogFormat, String> {
        Ok(LogFormat::Text {
            parts: parse(format)?,
            omit_empty,
        })
    }

    /// A JSON format from `json_format`'s object.
    pub fn json(
        object: &serde_json::Map<String, serde_json::Value>,
        omit_empty: bool,
    ) -> Result<LogFormat, String> {
        Ok(LogFormat::Json {
            fields: json_fields(object)?,
            omit_empty,
        })
    }

    fn reads_tls(&self) -> bool {
        fn parts(p: &[Part]) -> bool {
            p.iter()
                .any(|p| matches!(p, Part::Command(Command::RequestedServerName, _)))
        }
        fn fields(f: &[(String, JsonField)]) -> bool {
            f.iter().any(|(_, v)| match v {
                JsonField::Command(c, _) => *c == Command::RequestedServerName,
                JsonField::Text(p) => parts(p),
                JsonField::Object(o) => fields(o),
                JsonField::Constant(_) => false,
            })
        }
        match self {
            LogFormat::Text { parts: p, .. } => parts(p),
            LogFormat::Json { fields: f, .. } => fields(f),
        }
    }
}

impl AccessLogs {
    pub fn new(logs: Vec<AccessLog>) -> AccessLogs {
        let reads_tls = logs.iter().any(|l| l.format.reads_tls());
        AccessLogs { logs, reads_tls }
    }
}

fn json_fields(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, JsonField)>, String> {
    let mut fields = Vec::with_capacity(object.len());
    for (key, value) in object {
        let field = match value {
            serde_json::Value::String(text) => {
                let mut parts = parse(text)?;
                match parts.as_slice() {
                    [Part::Command(..)] => match parts.pop() {
                        Some(Part::Command(c, max)) => JsonField::Command(c, max),
                        _ => JsonField::Text(parts),
                    },
                    _ => JsonField::Text(parts),
                }
            }
            serde_json::Value::Object(o) => JsonField::Object(json_fields(o)?),
            serde_json::Value::Array(_) => {
                return Err(format!("json_format.{key}: lists are not supported"));
            }
            other => JsonField::Constant(other.clone()),
        };
        fields.push((key.clone(), field));
    }
    Ok(fields)
}

/// Parse a format string into literals and command operators (`%NAME%`, `%NAME(ARG)%`,
/// `%NAME(ARG):MAX%`).
pub fn parse(format: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            literal.push('%');
            rest = r;
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let mut after = &rest[name_len..];
        if name.is_empty() {
            return Err(format!(
                "access log format `{format}`: `%` must start a command operator such as %START_TIME%"
            ));
        }
        let mut arg = None;
        if let Some(a) = after.strip_prefix('(') {
            let Some(close) = a.find(')') else {
                return Err(format!(
                    "access log format `{format}`: %{name}( is not closed"
                ));
            };
            arg = Some(&a[..close]);
            after = &a[close + 1..];
        }
        let mut max_len = None;
        if let Some(m) = after.strip_prefix(':') {
            let digits = m.find(|c: char| !c.is_ascii_digit()).unwrap_or(m.len());
            let n = m[..digits].parse::<usize>().map_err(|_| {
                format!("access log format `{format}`: %{name}: needs a length after `:`")
            })?;
            max_len = Some(n);
            after = &m[digits..];
        }
        let Some(r) = after.strip_prefix('%') else {
            return Err(format!(
                "access log format `{format}`: command operator %{name} is not closed with `%`"
            ));
        };
        rest = r;
        let command = command(name, arg).map_err(|e| format!("access log format: {e}"))?;
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(Part::Command(command, max_len));
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

fn command(name: &str, arg: Option<&str>) -> Result<Command, String> {
    let plain = |c: Command| match arg {
        None => Ok(c),
        Some(_) => Err(format!("%{name}% takes no argument")),
    };
    match name {
        "START_TIME" => Ok(Command::StartTime(
            arg.filter(|a| !a.is_empty()).map(time_layout).transpose()?,
        )),
        "REQ" | "RESP" => {
            let arg = arg.ok_or_else(|| format!("%{name}(...)% needs a header name"))?;
            let (main, alt) = match arg.split_once('?') {
                Some((m, a)) => (header_key(m)?, Some(header_key(a)?)),
                None => (header_key(arg)?, None),
            };
            Ok(if name == "REQ" {
                Command::Request(main, alt)
            } else {
                Command::Response(main, alt)
            })
        }
        "PROTOCOL" => plain(Command::Protocol),
        "RESPONSE_CODE" => plain(Command::ResponseCode),
        "RESPONSE_FLAGS" => plain(Command::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => plain(Command::ResponseCodeDetails),
        "BYTES_RECEIVED" => plain(Command::BytesReceived),
        "BYTES_SENT" => plain(Command::BytesSent),
        "DURATION" => plain(Command::Duration),
        "UPSTREAM_HOST" => plain(Command::UpstreamHost),
        "UPSTREAM_CLUSTER" => plain(Command::UpstreamCluster),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            plain(Command::RemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Command::RemoteAddressWithoutPort)
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => plain(Command::RemotePort),
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(Command::LocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => plain(Command::LocalAddressWithoutPort),
        "DOWNSTREAM_LOCAL_PORT" => plain(Command::LocalPort),
        "REQUESTED_SERVER_NAME" => plain(Command::RequestedServerName),
        "ROUTE_NAME" => plain(Command::RouteName),
        "HOSTNAME" => plain(Command::Hostname),
        "UPSTREAM_LOCAL_ADDRESS"
        | "UPSTREAM_TRANSPORT_FAILURE_REASON"
        | "CONNECTION_TERMINATION_DETAILS" => plain(Command::Unknown),
        other => Err(format!("command operator %{other}% is not supported")),
    }
}

fn header_key(name: &str) -> Result<HeaderKey, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        ":authority" => HeaderKey::Authority,
        ":scheme" => HeaderKey::Scheme,
        n if n.starts_with(':') => return Err(format!("pseudo-header {name} is not supported")),
        n => HeaderKey::Named(
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?,
        ),
    })
}

/// A `START_TIME(...)` layout.
fn time_layout(layout: &str) -> Result<Vec<TimePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = layout.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let mut spec = String::new();
        let part = loop {
            let Some(n) = chars.next() else {
                return Err(format!(
                    "START_TIME layout `{layout}` ends inside a `%` specifier"
                ));
            };
            spec.push(n);
            match spec.as_str() {
                "%" => {
                    literal.push('%');
                    break None;
                }
                "Y" => break Some(TimePart::Year),
                "y" => break Some(TimePart::Year2),
                "m" => break Some(TimePart::Month),
                "d" => break Some(TimePart::Day),
                "e" => break Some(TimePart::DaySpace),
                "j" => break Some(TimePart::DayOfYear),
                "H" => break Some(TimePart::Hour),
                "M" => break Some(TimePart::Minute),
                "S" => break Some(TimePart::Second),
                "s" => break Some(TimePart::Epoch),
                "f" => break Some(TimePart::Fraction(9)),
                "b" | "h" => break Some(TimePart::MonthName),
                "a" => break Some(TimePart::WeekdayName),
                "z" => break Some(TimePart::Offset),
                "Z" => break Some(TimePart::Zone),
                "T" => {
                    parts_push(&mut parts, &mut literal, TimePart::Hour);
                    parts_push(&mut parts, &mut literal, TimePart::Literal(":".into()));
                    parts_push(&mut parts, &mut literal, TimePart::Minute);
                    literal.push(':');
                    break Some(TimePart::Second);
                }
                "F" => {
                    parts_push(&mut parts, &mut literal, TimePart::Year);
                    literal.push('-');
                    parts_push(&mut parts, &mut literal, TimePart::Month);
                    literal.push('-');
                    break Some(TimePart::Day);
                }
                s if s.len() == 2
                    && s.starts_with(|c: char| c.is_ascii_digit())
                    && s.ends_with('f') =>
                {
                    break Some(TimePart::Fraction(digit(s)));
                }
                s if s.len() == 3
                    && s.starts_with('E')
                    && s.as_bytes()[1].is_ascii_digit()
                    && s.ends_with('S') =>
                {
                    break Some(TimePart::SecondFraction(digit(&s[1..])));
                }
                s if s.len() < 3
                    && (s.starts_with('E') || s.starts_with(|c: char| c.is_ascii_digit())) => {}
                s => {
                    return Err(format!(
                        "START_TIME layout `{layout}`: %{s} is not supported"
                    ))
                }
            }
        };
        if let Some(p) = part {
            parts_push(&mut parts, &mut literal, p);
        }
    }
    if !literal.is_empty() {
        parts.push(TimePart::Literal(literal));
    }
    Ok(parts)
}

fn digit(s: &str) -> usize {
    s.as_bytes()
        .first()
        .map(|b| b.wrapping_sub(b'0') as usize)
        .unwrap_or(0)
        .min(9)
}

fn parts_push(parts: &mut Vec<TimePart>, literal: &mut String, part: TimePart) {
    if !literal.is_empty() {
        parts.push(TimePart::Literal(std::mem::take(literal)));
    }
    parts.push(part);
}

// ---- what a request leaves for its line -----------------------------------------------------

/// Filled in by routing, read when the line is written. Each value is set once, without a lock.
#[derive(Debug, Default)]
pub struct LogSlot {
    flag: AtomicU8,
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    host: OnceLock<SocketAddr>,
    route: OnceLock<String>,
    details: OnceLock<std::borrow::Cow<'static, str>>,
    sent: OnceLock<SentHead>,
}

/// The request head as sent upstream.
#[derive(Debug)]
pub struct SentHead {
    pub path: http::uri::PathAndQuery,
    pub authority: Option<http::HeaderValue>,
    pub headers: HeaderMap,
}

impl LogSlot {
    pub fn set_flag(&self, flag: Flag) {
        self.flag.store(flag as u8, Ordering::Relaxed);
    }
    /// The cluster the request goes to (known before its endpoint).
    pub fn set_cluster(&self, cluster: &Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster.clone());
    }
    pub fn set_host(&self, host: SocketAddr) {
        let _ = self.host.set(host);
    }
    pub fn set_route(&self, name: &str) {
        if !name.is_empty() {
            let _ = self.route.set(name.to_string());
        }
    }
    /// `RESPONSE_CODE_DETAILS`, when the proxy knows better than the response flag.
    pub fn set_details(&self, details: impl Into<std::borrow::Cow<'static, str>>) {
        let _ = self.details.set(details.into());
    }

    /// `RESPONSE_CODE_DETAILS` of an upstream connection that failed with `error`, as Envoy words
    /// it: `upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}`.
    pub fn set_connect_failure(&self, error: &std::io::Error) {
        let text = error.to_string();
        // std's text ends with ` (os error N)`; Envoy's is the bare `strerror`.
        let bare = text.split(" (os error").next().unwrap_or(&text);
        self.set_details(format!(
            "upstream_reset_before_response_started{{remote_connection_failure|delayed_connect_error:_{}}}",
            bare.replace(' ', "_")
        ));
    }
    pub fn set_sent(&self, head: SentHead) {
        let _ = self.sent.set(head);
    }
    fn flag(&self) -> Flag {
        Flag::from_index(self.flag.load(Ordering::Relaxed))
    }
}

/// A logged request from its head to the end of its response.
#[derive(Debug)]
pub struct LogEntry {
    pub logs: Arc<AccessLogs>,
    pub slot: Arc<LogSlot>,
    pub wall: SystemTime,
    pub start: Instant,
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub authority: Option<http::HeaderValue>,
    pub secure: bool,
    pub version: Version,
    /// The request's headers as received (after its id was settled and its edge headers set).
    pub headers: HeaderMap,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub server_name: Option<String>,
    pub health_check: bool,
    /// Request body bytes, when known at the head; counted by the body otherwise.
    pub received: Arc<std::sync::atomic::AtomicU64>,
    pub status: u16,
    pub response: HeaderMap,
    pub sent_bytes: u64,
}

/// A value of a command operator.
enum Val<'a> {
    Absent,
    Text(&'a str),
    Owned(String),
    Num(u64),
}

impl LogEntry {
    /// Write the request's lines (once, when its response is over).
    pub fn finish(&self) {
        let duration = self.start.elapsed().as_millis() as u64;
        for log in &self.logs.logs {
            if log
                .filter
                .as_ref()
                .is_some_and(|f| !self.admits(f, duration))
            {
                continue;
            }
            let mut line = String::with_capacity(256);
            match &log.format {
                LogFormat::Text { parts, omit_empty } => {
                    self.text(parts, *omit_empty, duration, &mut line)
                }
                LogFormat::Json { fields, omit_empty } => {
                    self.json(fields, *omit_empty, duration, &mut line);
                    line.push('\n');
                }
            }
            log.sink.write(line.as_bytes());
        }
    }

    fn admits(&self, filter: &LogFilter, duration: u64) -> bool {
        match filter {
            LogFilter::Status(c) => c.admits(self.status as u64),
            LogFilter::Duration(c) => c.admits(duration),
            LogFilter::NotHealthCheck => !self.health_check,
            LogFilter::ResponseFlags(flags) => {
                let flag = self.slot.flag();
                !matches!(flag, Flag::None)
                    && (flags.is_empty() || flags.iter().any(|f| f == flag.code()))
            }
            LogFilter::Header(m) => {
                let (path, authority, headers) = self.request_head();
                let pq = path.as_str();
                let (p, q) = pq.split_once('?').unwrap_or((pq, ""));
                let view = RequestView {
                    method: self.method.as_str(),
                    scheme: if self.secure { "https" } else { "http" },
                    authority: authority.and_then(|a| a.to_str().ok()).unwrap_or(""),
                    path: p,
                    query: q,
                    path_and_query: pq,
                    headers,
                };
                m.matches(&view)
            }
            LogFilter::And(all) => all.iter().all(|f| self.admits(f, duration)),
            LogFilter::Or(any) => any.iter().any(|f| self.admits(f, duration)),
        }
    }

    /// The request as sent upstream when it was, else as received.
    fn request_head(
        &self,
    ) -> (
        &http::uri::PathAndQuery,
        Option<&http::HeaderValue>,
        &HeaderMap,
    ) {
        match self.slot.sent.get() {
            Some(s) => (&s.path, s.authority.as_ref(), &s.headers),
            None => (&self.path, self.authority.as_ref(), &self.headers),
        }
    }

    fn header<'a>(&'a self, key: &HeaderKey, request: bool) -> Option<&'a str> {
        if request {
            let (path, authority, headers) = self.request_head();
            match key {
                HeaderKey::Method => Some(self.method.as_str()),
                HeaderKey::Path => Some(path.as_str()),
                HeaderKey::Authority => authority
                    .or_else(|| headers.get(http::header::HOST))
                    .and_then(|v| v.to_str().ok()),
                HeaderKey::Scheme => Some(if self.secure { "https" } else { "http" }),
                HeaderKey::Named(n) => headers.get(n).and_then(|v| v.to_str().ok()),
            }
        } else {
            match key {
                HeaderKey::Named(n) => self.response.get(n).and_then(|v| v.to_str().ok()),
                _ => None,
            }
        }
    }

    fn value(&self, c: &Command, duration: u64) -> Val<'_> {
        let addr = |a: SocketAddr| Val::Owned(a.to_string());
        match c {
            Command::StartTime(layout) => Val::Owned(start_time(self.wall, layout.as_deref())),
            Command::Request(main, alt) | Command::Response(main, alt) => {
                let request = matches!(c, Command::Request(..));
                self.header(main, request)
                    .or_else(|| alt.as_ref().and_then(|a| self.header(a, request)))
                    .map_or(Val::Absent, Val::Text)
            }
            Command::Protocol => Val::Text(match self.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            }),
            Command::ResponseCode => Val::Num(self.status as u64),
            Command::ResponseFlags => Val::Text(self.slot.flag().code()),
            Command::ResponseCodeDetails => match self.slot.details.get() {
                Some(d) => Val::Text(d),
                None => details_of(self.slot.flag()).map_or(Val::Absent, Val::Text),
            },
            Command::BytesReceived => Val::Num(self.received.load(Ordering::Relaxed)),
            Command::BytesSent => Val::Num(self.sent_bytes),
            Command::Duration => Val::Num(duration),
            Command::UpstreamHost => self.slot.host.get().map_or(Val::Absent, |h| addr(*h)),
            Command::UpstreamCluster => self
                .slot
                .cluster
                .get()
                .map_or(Val::Absent, |c| Val::Text(&c.name)),
            Command::RemoteAddress => addr(self.remote),
            Command::RemoteAddressWithoutPort => Val::Owned(self.remote.ip().to_string()),
            Command::RemotePort => Val::Num(self.remote.port() as u64),
            Command::LocalAddress => addr(self.local),
            Command::LocalAddressWithoutPort => Val::Owned(self.local.ip().to_string()),
            Command::LocalPort => Val::Num(self.local.port() as u64),
            Command::RequestedServerName => {
                self.server_name.as_deref().map_or(Val::Absent, Val::Text)
            }
            Command::RouteName => self.slot.route.get().map_or(Val::Absent, |r| Val::Text(r)),
            Command::Hostname => Val::Text(hostname()),
            Command::Unknown => Val::Absent,
        }
    }

    fn text(&self, parts: &[Part], omit_empty: bool, duration: u64, out: &mut String) {
        for part in parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Command(c, max) => {
                    let absent = if omit_empty { "" } else { "-" };
                    match self.value(c, duration) {
                        Val::Absent => out.push_str(absent),
                        Val::Text(t) => out.push_str(truncate(t, *max)),
                        Val::Owned(t) => out.push_str(truncate(&t, *max)),
                        Val::Num(n) => {
                            let _ = write!(out, "{n}");
                        }
                    }
                }
            }
        }
    }

    fn json(
        &self,
        fields: &[(String, JsonField)],
        omit_empty: bool,
        duration: u64,
        out: &mut String,
    ) {
        out.push('{');
        let mut first = true;
        for (key, field) in fields {
            let mut value = String::new();
            match field {
                // Struct numbers are doubles; Envoy writes a whole one without a fraction.
                JsonField::Constant(serde_json::Value::Number(n)) => {
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        let _ = write!(value, "{}", f as i64);
                    } else {
                        value.push_str(&n.to_string());
                    }
                }
                JsonField::Constant(v) => value.push_str(&v.to_string()),
                JsonField::Command(c, max) => match self.value(c, duration) {
                    Val::Absent if omit_empty => continue,
                    Val::Absent => value.push_str("null"),
                    Val::Text(t) => json_string(truncate(t, *max), &mut value),
                    Val::Owned(t) => json_string(truncate(&t, *max), &mut value),
                    Val::Num(n) => {
                        let _ = write!(value, "{n}");
                    }
                },
                JsonField::Text(parts) => {
                    let mut text = String::new();
                    self.text(parts, omit_empty, duration, &mut text);
                    if omit_empty && text.is_empty() {
                        continue;
                    }
                    json_string(&text, &mut value);
                }
                JsonField::Object(inner) => self.json(inner, omit_empty, duration, &mut value),
            }
            if !first {
                out.push(',');
            }
            first = false;
            json_string(key, out);
            out.push(':');
            out.push_str(&value);
        }
        out.push('}');
    }
}

/// `RESPONSE_CODE_DETAILS` of a local answer known by its flag.
fn details_of(flag: Flag) -> Option<&'static str> {
    Some(match flag {
        Flag::NoRoute => "route_not_found",
        Flag::NoCluster => "cluster_not_found",
        Flag::NoHealthyUpstream => "no_healthy_upstream",
        Flag::UpstreamTimeout => "response_timeout",
        Flag::StreamIdleTimeout => "stream_idle_timeout",
        Flag::RequestTimeout => "request_overall_timeout",
        Flag::UpstreamConnectFailure => {
            "upstream_reset_before_response_started{remote_connection_failure}"
        }
        Flag::UpstreamOverflow => "upstream_reset_before_response_started{overflow}",
        Flag::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
        Flag::UpstreamProtocolError => "upstream_reset_before_response_started{protocol_error}",
        Flag::FaultInjected => "fault_filter_abort",
        _ => return None,
    })
}

fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(m) if m < s.len() => {
            let mut end = m;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "-".to_string())
    })
}

// ---- time ----------------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// A UTC calendar time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    day_of_year: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    epoch: i64,
    weekday: usize,
}

fn civil(t: SystemTime) -> Civil {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = d.as_secs() as i64;
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400) as u32;
    // Days since 1970-01-01 to a proleptic Gregorian date (eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = BEFORE[(month - 1) as usize] + day + u32::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        day_of_year,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        nanos: d.subsec_nanos(),
        epoch,
        weekday: days.rem_euclid(7) as usize,
    }
}

/// `START_TIME`: Envoy's default `2026-12-02T17:04:02.123Z`, or the layout.
fn start_time(t: SystemTime, layout: Option<&[TimePart]>) -> String {
    let c = civil(t);
    let mut out = String::with_capacity(32);
    let Some(layout) = layout else {
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            c.nanos / 1_000_000
        );
        return out;
    };
    for part in layout {
        let _ = match part {
            TimePart::Literal(l) => out.write_str(l),
            TimePart::Year => write!(out, "{:04}", c.year),
            TimePart::Year2 => write!(out, "{:02}", c.year % 100),
            TimePart::Month => write!(out, "{:02}", c.month),
            TimePart::Day => write!(out, "{:02}", c.day),
            TimePart::DaySpace => write!(out, "{:2}", c.day),
            TimePart::DayOfYear => write!(out, "{:03}", c.day_of_year),
            TimePart::Hour => write!(out, "{:02}", c.hour),
            TimePart::Minute => write!(out, "{:02}", c.minute),
            TimePart::Second => write!(out, "{:02}", c.second),
            TimePart::SecondFraction(0) => write!(out, "{:02}", c.second),
            TimePart::SecondFraction(n) => {
                let frac = format!("{:09}", c.nanos);
                write!(out, "{:02}.{}", c.second, &frac[..*n])
            }
            TimePart::Fraction(n) => {
                let frac = format!("{:09}", c.nanos);
                out.write_str(&frac[..(*n).max(1)])
            }
            TimePart::Epoch => write!(out, "{}", c.epoch),
            TimePart::MonthName => out.write_str(MONTHS[(c.month - 1) as usize]),
            TimePart::WeekdayName => out.write_str(WEEKDAYS[c.weekday]),
            TimePart::Offset => out.write_str("+0000"),
            TimePart::Zone => out.write_str("UTC"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_the_default_format() {
        let parts = parse(DEFAULT_FORMAT).unwrap();
        let commands: Vec<_> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Command(c, _) => Some(c.clone()),
                Part::Literal(_) => None,
            })
            .collect();
        assert_eq!(commands.len(), 15);
        assert_eq!(
            commands[2],
            Command::Request(
                HeaderKey::Named(HeaderName::from_static("x-envoy-original-path")),
                Some(HeaderKey::Path)
            )
        );
    }

    #[test]
    fn refuses_unknown_operators_by_name() {
        let e = parse("%DYNAMIC_METADATA(a:b)%").unwrap_err();
        assert!(e.contains("%DYNAMIC_METADATA%"), "{e}");
        assert!(parse("100% done").is_err());
        assert!(matches!(parse("100%%").unwrap().as_slice(), [Part::Literal(l)] if l == "100%"));
        assert!(parse("%REQ(:foo)%").is_err());
        assert!(parse("%START_TIME(%Q)%").is_err());
        let e = parse("%PROTOCOL(x)%").unwrap_err();
        assert!(e.contains("no argument"), "{e}");
    }

    #[test]
    fn lengths_cut_values() {
        let parts = parse("%REQ(USER-AGENT):3%").unwrap();
        assert!(matches!(parts[0], Part::Command(_, Some(3))));
        assert_eq!(truncate("curl/8", Some(3)), "cur");
        assert_eq!(truncate("é", Some(1)), "");
    }

    #[test]
    fn formats_start_times_in_utc() {
        // 2024-02-29T13:04:05.123456789Z, a Thursday.
        let t = UNIX_EPOCH + Duration::new(1_709_211_845, 123_456_789);
        assert_eq!(start_time(t, None), "2024-02-29T13:04:05.123Z");
        let layout = time_layout("%Y/%m/%d %H:%M:%E3S %s %6f %j %a %b %z|%T|%F %%").unwrap();
        assert_eq!(
            start_time(t, Some(&layout)),
            "2024/02/29 13:04:05.123 1709211845 123456 060 Thu Feb +0000|13:04:05|2024-02-29 %"
        );
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(start_time(t, None), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_values_that_are_one_operator_are_typed() {
        let v: serde_json::Value = serde_json::json!({
            "code": "%RESPONSE_CODE%",
            "line": "%REQ(:METHOD)% %PROTOCOL%",
            "nested": {"n": 1},
        });
        let LogFormat::Json { fields, .. } =
            LogFormat::json(v.as_object().unwrap(), false).unwrap()
        else {
            panic!("not json")
        };
        let by_key = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, f)| f.clone());
        assert!(matches!(
            by_key("code"),
            Some(JsonField::Command(Command::ResponseCode, None))
        ));
        assert!(matches!(by_key("line"), Some(JsonField::Text(_))));
        assert!(matches!(by_key("nested"), Some(JsonField::Object(_))));
    }

    #[test]
    fn comparisons() {
        let ge = Comparison {
            op: CompareOp::Ge,
            value: 400,
        };
        assert!(ge.admits(404) && ge.admits(400) && !ge.admits(399));
        let ne = Comparison {
            op: CompareOp::Ne,
            value: 200,
        };
        assert!(ne.admits(503) && !ne.admits(200));
    }
}
