//! Envoy's request sanitizing at the connection manager: `x-forwarded-for`, `x-forwarded-proto`,
//! `x-envoy-external-address`, and removal of Envoy control headers from external requests.
//!
//! As in Envoy 1.40 without `internal_address_config`, no downstream address counts as internal,
//! so every request is external and client-sent `x-envoy-*` control headers are dropped. With
//! `use_remote_address` the request is an edge request: the peer address is appended to
//! `x-forwarded-for` (the host's own address when the peer is on loopback, as Envoy does) and
//! reported in `x-envoy-external-address`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::snapshot::HcmConfig;

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Control headers Envoy strips from external requests.
const EXTERNAL_STRIP: [&str; 11] = [
    "x-envoy-internal",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];

/// Further headers Envoy strips from edge requests.
const EDGE_STRIP: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// The first non-loopback IPv4 address of this host (Envoy's local address), else 127.0.0.1.
pub fn local_address() -> IpAddr {
    static ADDR: OnceLock<IpAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|ifs| {
                ifs.into_iter()
                    .map(|i| i.ip())
                    .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    })
}

/// The client address after `xff_num_trusted_hops` (Envoy's "final remote address").
fn final_remote(headers: &HeaderMap, hcm: &HcmConfig, remote: SocketAddr) -> IpAddr {
    if hcm.xff_num_trusted_hops > 0 {
        if let Some(ip) = xff_entry(headers, hcm.xff_num_trusted_hops as usize - 1) {
            return ip;
        }
    }
    remote.ip()
}

/// The address of `x-forwarded-for` that is `skip` entries from the right, when it parses.
fn xff_entry(headers: &HeaderMap, skip: usize) -> Option<IpAddr> {
    let list: Vec<&str> = headers
        .get_all(&XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    list.len()
        .checked_sub(1 + skip)
        .and_then(|i| list[i].parse().ok())
}

/// The downstream client's address as Envoy's connection manager determines it (RBAC's
/// `remote_ip`): with `use_remote_address`, the peer (or the trusted hop of `x-forwarded-for`);
/// without it, the last `x-forwarded-for` address past `xff_num_trusted_hops`, else the peer.
pub fn downstream_remote(headers: &HeaderMap, hcm: &HcmConfig, remote: SocketAddr) -> IpAddr {
    if hcm.use_remote_address {
        return final_remote(headers, hcm, remote);
    }
    xff_entry(headers, hcm.xff_num_trusted_hops as usize).unwrap_or(remote.ip())
}

/// Apply Envoy's request sanitizing.
pub fn sanitize_request(
    headers: &mut HeaderMap,
    hcm: &HcmConfig,
    remote: SocketAddr,
    secure: bool,
) {
    let proto = HeaderValue::from_static(if secure { "https" } else { "http" });
    // One pass over the names: requests rarely carry x-envoy-* headers at all.
    if headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        for name in EXTERNAL_STRIP {
            headers.remove(name);
        }
    }
    if hcm.use_remote_address {
        let client = final_remote(headers, hcm, remote);
        if !hcm.skip_xff_append {
            let peer = if remote.ip().is_loopback() {
                local_address()
            } else {
                remote.ip()
            };
            let value = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{peer}"),
                _ => peer.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(XFF, v);
            }
        }
        headers.insert(XFP, proto);
        if headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
            for name in EDGE_STRIP {
                headers.remove(name);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(EXTERNAL_ADDRESS, v);
        }
    } else {
        // One lookup: kept when present, added when not.
        headers.entry(XFP).or_insert(proto);
    }
}
