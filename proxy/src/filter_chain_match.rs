//! Which filter chain of a listener serves a connection (`filter_chain_match`), as Envoy chooses.
//!
//! Envoy descends a tree, one criterion at a time, and never backs up: first the server name
//! (an exact name, else the longest `*.suffix`, else chains without names), then among those the
//! transport protocol (`tls` or `raw_buffer` as the TLS inspector found it, else chains without
//! one), then the application protocols offered in the ClientHello (any in common, else chains
//! without any). A connection that finds no chain is closed.

/// What is known of a connection when its chain is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// SNI from the ClientHello (lower case); `None` without TLS or without the TLS inspector.
    pub server_name: Option<String>,
    /// `tls` when the inspector read a ClientHello, `raw_buffer` otherwise.
    pub transport: &'static str,
    /// ALPN protocols offered in the ClientHello.
    pub application_protocols: Vec<String>,
}

impl Seen {
    /// A connection nothing was read from (no TLS inspector, or not TLS).
    pub fn raw() -> Self {
        Seen {
            server_name: None,
            transport: "raw_buffer",
            application_protocols: Vec::new(),
        }
    }
}

/// The match criteria of one chain.
#[derive(Debug, Clone, Copy)]
pub struct Criteria<'a> {
    pub server_names: &'a [String],
    /// Empty: any.
    pub transport_protocol: &'a str,
    /// Empty: any.
    pub application_protocols: &'a [String],
}

/// The index of the chain that serves `seen`, if any. Each level is a filter over the chains,
/// found by walking them again rather than collecting: this runs for every new connection.
pub fn select<'a>(
    chains: impl Iterator<Item = Criteria<'a>> + Clone,
    seen: &Seen,
) -> Option<usize> {
    let sni = seen.server_name.as_deref();
    // 1. Server names: the most specific level that has chains at all.
    let level = server_name_level(chains.clone(), sni);
    let by_name = |c: &Criteria<'_>| level.admits(c, sni);
    // 2. Transport protocol: exact, else chains that name none.
    let exact_transport = chains
        .clone()
        .any(|c| by_name(&c) && c.transport_protocol == seen.transport);
    let by_transport = |c: &Criteria<'_>| {
        by_name(c)
            && if exact_transport {
                c.transport_protocol == seen.transport
            } else {
                c.transport_protocol.is_empty()
            }
    };
    // 3. Application protocols: one in common, else chains that name none.
    let offered = |c: &Criteria<'_>| {
        c.application_protocols
            .iter()
            .any(|p| seen.application_protocols.iter().any(|o| o == p))
    };
    let exact_alpn = chains.clone().any(|c| by_transport(&c) && offered(&c));
    chains.enumerate().find_map(|(i, c)| {
        let alpn_ok = if exact_alpn {
            offered(&c)
        } else {
            c.application_protocols.is_empty()
        };
        (by_transport(&c) && alpn_ok).then_some(i)
    })
}

/// Which server-name level a connection's chains come from.
enum NameLevel {
    Exact,
    /// The longest `*.suffix` that matches, by its length.
    Wildcard(usize),
    Unnamed,
}

impl NameLevel {
    fn admits(&self, c: &Criteria<'_>, sni: Option<&str>) -> bool {
        match (self, sni) {
            (NameLevel::Exact, Some(sni)) => {
                c.server_names.iter().any(|n| n.eq_ignore_ascii_case(sni))
            }
            (NameLevel::Wildcard(len), Some(sni)) => c
                .server_names
                .iter()
                .filter_map(|n| wildcard_suffix(n, sni))
                .any(|s| s.len() == *len),
            _ => c.server_names.is_empty(),
        }
    }
}

fn server_name_level<'a>(
    chains: impl Iterator<Item = Criteria<'a>> + Clone,
    sni: Option<&str>,
) -> NameLevel {
    let Some(sni) = sni else {
        return NameLevel::Unnamed;
    };
    if chains
        .clone()
        .any(|c| c.server_names.iter().any(|n| n.eq_ignore_ascii_case(sni)))
    {
        return NameLevel::Exact;
    }
    chains
        .flat_map(|c| {
            c.server_names
                .iter()
                .filter_map(|n| wildcard_suffix(n, sni))
                .map(str::len)
        })
        .max()
        .map_or(NameLevel::Unnamed, NameLevel::Wildcard)
}

/// The `.suffix` of a `*.suffix` server name that matches `sni`.
fn wildcard_suffix<'n>(name: &'n str, sni: &str) -> Option<&'n str> {
    name.strip_prefix('*').filter(|suffix| {
        sni.len() > suffix.len()
            && sni
                .get(sni.len() - suffix.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chain(Vec<String>, &'static str, Vec<String>);

    fn chain(names: &[&str], transport: &'static str, alpn: &[&str]) -> Chain {
        Chain(
            names.iter().map(|s| s.to_string()).collect(),
            transport,
            alpn.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn pick(
        chains: &[Chain],
        sni: Option<&str>,
        transport: &'static str,
        alpn: &[&str],
    ) -> Option<usize> {
        let seen = Seen {
            server_name: sni.map(str::to_string),
            transport,
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        };
        select(
            chains.iter().map(|c| Criteria {
                server_names: &c.0,
                transport_protocol: c.1,
                application_protocols: &c.2,
            }),
            &seen,
        )
    }

    #[test]
    fn server_names_follow_envoy_precedence() {
        let chains = [
            chain(&["*.example.com"], "", &[]),
            chain(&["api.example.com"], "", &[]),
            chain(&[], "", &[]),
            chain(&["*.eu.example.com"], "", &[]),
        ];
        assert_eq!(pick(&chains, Some("api.example.com"), "tls", &[]), Some(1));
        assert_eq!(pick(&chains, Some("API.Example.com"), "tls", &[]), Some(1));
        assert_eq!(pick(&chains, Some("www.example.com"), "tls", &[]), Some(0));
        assert_eq!(pick(&chains, Some("x.eu.example.com"), "tls", &[]), Some(3));
        assert_eq!(pick(&chains, Some("other.org"), "tls", &[]), Some(2));
        assert_eq!(pick(&chains, None, "raw_buffer", &[]), Some(2));
        assert_eq!(
            pick(&[chain(&["a.com"], "", &[])], Some("b.com"), "tls", &[]),
            None
        );
    }

    #[test]
    fn transport_and_alpn_narrow_without_backing_up() {
        let chains = [
            chain(&[], "tls", &[]),
            chain(&[], "", &[]),
            chain(&["a.com"], "raw_buffer", &[]),
            chain(&["b.com"], "tls", &["h2"]),
            chain(&["b.com"], "tls", &[]),
        ];
        assert_eq!(pick(&chains, None, "tls", &[]), Some(0));
        assert_eq!(pick(&chains, None, "raw_buffer", &[]), Some(1));
        // a.com's chains want raw_buffer: a TLS connection for a.com finds nothing, and does
        // not fall back to the chains without server names (Envoy's tree has no backtracking).
        assert_eq!(pick(&chains, Some("a.com"), "tls", &[]), None);
        assert_eq!(
            pick(&chains, Some("b.com"), "tls", &["h2", "http/1.1"]),
            Some(3)
        );
        assert_eq!(pick(&chains, Some("b.com"), "tls", &["http/1.1"]), Some(4));
    }
}
