//! The TLS inspector listener filter (`envoy.filters.listener.tls_inspector`): reads a new
//! connection's ClientHello without consuming it, so that its SNI, its ALPN protocols and whether
//! it is TLS at all choose the filter chain. The bytes stay in the socket: a chain that
//! terminates TLS handshakes as usual, and a chain that relays TCP (`tcp_proxy`) passes the
//! ClientHello on untouched (TLS passthrough).

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

use crate::filter_chain_match::Seen;

/// Envoy's `listener_filters_timeout` default: a connection that has not said enough by then is
/// closed.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The largest ClientHello read (Envoy's `max_client_hello_size` default).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say, or `None` if it closed, sent a broken ClientHello or
/// took too long.
pub async fn inspect(stream: &TcpStream) -> Option<Seen> {
    tokio::time::timeout(TIMEOUT, read_hello(stream))
        .await
        .ok()
        .flatten()
}

async fn read_hello(stream: &TcpStream) -> Option<Seen> {
    let mut buf = vec![0u8; 2048];
    let mut seen_len = 0;
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        // A TLS record starts with the handshake type 22; anything else is not TLS.
        if buf[0] != 0x16 {
            return Some(Seen::raw());
        }
        match parse(&buf[..n]) {
            Parsed::Hello(seen) => return Some(seen),
            Parsed::Broken => return None,
            Parsed::Partial => {}
        }
        if n == buf.len() {
            if buf.len() >= MAX_CLIENT_HELLO {
                return None;
            }
            buf.resize((buf.len() * 2).min(MAX_CLIENT_HELLO), 0);
        } else if n == seen_len {
            // Peeking again returns at once while the socket holds unread bytes: wait for more.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen_len = n;
    }
}

enum Parsed {
    Hello(Seen),
    Partial,
    Broken,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut acceptor = Acceptor::default();
    let mut input = bytes;
    while !input.is_empty() {
        if acceptor.read_tls(&mut input).is_err() {
            return Parsed::Broken;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Parsed::Hello(Seen {
                server_name: hello.server_name().map(str::to_ascii_lowercase),
                transport: "tls",
                application_protocols: hello
                    .alpn()
                    .map(|protocols| {
                        protocols
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        Ok(None) => Parsed::Partial,
        Err(_) => Parsed::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls's client writes it.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_and_waits_for_a_whole_hello() {
        let hello = client_hello("API.example.com", &[b"h2", b"http/1.1"]);
        match parse(&hello) {
            Parsed::Hello(seen) => {
                assert_eq!(seen.server_name.as_deref(), Some("api.example.com"));
                assert_eq!(seen.transport, "tls");
                assert_eq!(seen.application_protocols, ["h2", "http/1.1"]);
            }
            _ => panic!("a whole ClientHello"),
        }
        assert!(matches!(parse(&hello[..hello.len() / 2]), Parsed::Partial));
        assert!(matches!(
            parse(b"\x16\x03\x01\x00\x05hello"),
            Parsed::Broken
        ));
    }
}
