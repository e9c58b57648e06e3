//! TLS end to end with certificates made at test time (rcgen): TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1, SNI selection between filter chains, mTLS accepted and refused (by chain and by
//! name), `curl --cacert`, an X.509 v1 certificate, upstream certificate checks compared with
//! real Envoy's, and certificate reload on SIGHUP. The TLS inspector's chain choice (SNI,
//! transport protocol, ALPN; TLS and plaintext on one port; TLS passthrough) against Envoy's.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use support::*;

/// A throw-away certificate authority writing PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_params,
            ca_key,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names`: DNS names, and URIs for names that start with `spiffe://`.
    fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let (uris, dns): (Vec<&str>, Vec<&str>) =
            names.iter().partition(|n| n.starts_with("spiffe://"));
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }
}

fn downstream_tls(cert: &Issued, extra: Value) -> Value {
    let mut common = json!({
        "tls_certificates": [{"certificate_chain": {"filename": cert.cert}, "private_key": {"filename": cert.key}}],
        "alpn_protocols": ["h2", "http/1.1"]
    });
    let mut ctx = json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if k == "common_tls_context" {
            for (ck, cv) in v.as_object().cloned().unwrap_or_default() {
                common[ck] = cv;
            }
        } else {
            ctx[k] = v;
        }
    }
    ctx["common_tls_context"] = common;
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

/// A bootstrap whose listener has one TLS filter chain per `(server_names, transport_socket)`.
fn tls_bootstrap(
    chains: Vec<(Vec<&str>, Value)>,
    clusters: Vec<Value>,
    route_cluster: &str,
) -> String {
    let plain: Value = serde_json::from_str(&bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": route_cluster}}])),
        clusters,
        json!({}),
    ))
    .unwrap();
    let mut b = plain.clone();
    let template = plain["static_resources"]["listeners"][0]["filter_chains"][0].clone();
    let list: Vec<Value> = chains
        .into_iter()
        .map(|(names, socket)| {
            let mut c = template.clone();
            if !names.is_empty() {
                c["filter_chain_match"] = json!({"server_names": names});
            }
            c["transport_socket"] = socket;
            c
        })
        .collect();
    b["static_resources"]["listeners"][0]["filter_chains"] = json!(list);
    // Envoy knows a connection's SNI when it chooses the chain only through the TLS inspector.
    b["static_resources"]["listeners"][0]["listener_filters"] = tls_inspector();
    b.to_string()
}

fn tls_inspector() -> Value {
    json!([{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    }}])
}

struct ClientOptions<'a> {
    sni: &'a str,
    /// The request's path.
    path: &'a str,
    versions: &'a [&'static rustls::SupportedProtocolVersion],
    alpn: &'a [&'a [u8]],
    client_cert: Option<&'a Issued>,
}

fn client_config(pki: &Pki, o: &ClientOptions<'_>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(o.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match o.client_cert {
        Some(c) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&c.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = o.alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

struct TlsOutcome {
    peer: CertificateDer<'static>,
    version: rustls::ProtocolVersion,
    alpn: Option<Vec<u8>>,
    status: u16,
    upstream_saw: Value,
}

/// Connect with TLS, send `GET /` with HTTP/2 or HTTP/1.1 as ALPN chose, and report.
async fn tls_get(
    addr: std::net::SocketAddr,
    pki: &Pki,
    o: ClientOptions<'_>,
) -> Result<TlsOutcome, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(pki, &o)));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(o.sni.to_string()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let peer = session
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no peer cert")?;
    let version = session.protocol_version().ok_or("no version")?;
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let req = http::Request::get(format!("https://{}{}", o.sni, o.path))
        .header("host", o.sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsOutcome {
        peer: peer.into_owned(),
        version,
        alpn,
        status,
        upstream_saw: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// `curl --cacert CA https://HOST:PORT/` resolved to loopback; the echoed request as JSON.
fn curl_json(ca: &std::path::Path, host: &str, port: u16) -> Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}/"),
        ])
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn opts<'a>(sni: &'a str) -> ClientOptions<'a> {
    ClientOptions {
        sni,
        path: "/",
        versions: rustls::ALL_VERSIONS,
        alpn: &[b"h2", b"http/1.1"],
        client_cert: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_chain_and_versions_and_alpn_are_negotiated() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.example.com"]);
    let b = pki.issue("b", &["b.example.com", "*.b.example.com"]);
    let up = upstream("app").await;
    let p = sluice(&tls_bootstrap(
        vec![
            (vec!["a.example.com"], downstream_tls(&a, json!({}))),
            (
                vec!["b.example.com", "*.b.example.com"],
                downstream_tls(&b, json!({})),
            ),
        ],
        vec![cluster("app", &[up.port()])],
        "app",
    ))
    .await;
    let addr = p.listener("main");
    let r = tls_get(addr, &pki, opts("a.example.com")).await.unwrap();
    assert_eq!((r.status, &r.peer), (200, &a.der));
    assert_eq!(r.upstream_saw["headers"]["x-forwarded-proto"], "https");
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        r.upstream_saw["version"], "HTTP/1.1",
        "upstream stays HTTP/1.1"
    );
    let r = tls_get(addr, &pki, opts("x.b.example.com")).await.unwrap();
    assert_eq!((r.status, &r.peer), (200, &b.der), "wildcard server name");
    // TLS 1.2 and 1.3, ALPN http/1.1.
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let o = ClientOptions {
            versions: &[version],
            alpn: &[b"http/1.1"],
            ..opts("b.example.com")
        };
        let r = tls_get(addr, &pki, o).await.unwrap();
        assert_eq!(
            (r.status, r.version, r.alpn.as_deref()),
            (200, want, Some(&b"http/1.1"[..]))
        );
    }
    // No chain for an unknown name (there is no default chain): the handshake fails.
    assert!(tls_get(addr, &pki, opts("c.example.com")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_known_clients_and_refuses_others() {
    let pki = Pki::new();
    let server = pki.issue("server", &["mtls.example.com"]);
    let client = pki.issue("client", &["client.example.com"]);
    let unnamed = pki.issue("unnamed", &["other.example.com"]);
    let stranger_ca = Pki::new();
    let stranger = stranger_ca.issue("stranger", &["client.example.com"]);
    let up = upstream("app").await;
    let ca = pki.ca();
    let p = sluice(&tls_bootstrap(
        vec![(
            vec![],
            downstream_tls(
                &server,
                json!({
                    "require_client_certificate": true,
                    "common_tls_context": {"validation_context": {
                        "trusted_ca": {"filename": ca},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"suffix": "client.example.com"}}
                        ]
                    }}
                }),
            ),
        )],
        vec![cluster("app", &[up.port()])],
        "app",
    ))
    .await;
    let addr = p.listener("main");
    let ok = tls_get(
        addr,
        &pki,
        ClientOptions {
            client_cert: Some(&client),
            ..opts("mtls.example.com")
        },
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    assert!(
        tls_get(addr, &pki, opts("mtls.example.com")).await.is_err(),
        "no client certificate"
    );
    assert!(
        tls_get(
            addr,
            &pki,
            ClientOptions {
                client_cert: Some(&stranger),
                ..opts("mtls.example.com")
            }
        )
        .await
        .is_err(),
        "certificate from another CA"
    );
    assert!(
        tls_get(
            addr,
            &pki,
            ClientOptions {
                client_cert: Some(&unnamed),
                ..opts("mtls.example.com")
            }
        )
        .await
        .is_err(),
        "trusted certificate whose name matches no matcher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_cacert_and_certificate_reload() {
    let pki = Pki::new();
    let first = pki.issue("site", &["site.example.com"]);
    let up = upstream("app").await;
    let p = sluice(&tls_bootstrap(
        vec![(vec![], downstream_tls(&first, json!({})))],
        vec![cluster("app", &[up.port()])],
        "app",
    ))
    .await;
    let port = p.listener("main").port();
    let body = curl_json(&pki.ca(), "site.example.com", port);
    assert_eq!(body["upstream"], "app");

    // Replace the certificate files in place and reload: new connections get the new certificate.
    let second = pki.issue("site", &["site.example.com"]);
    assert_ne!(first.der, second.der);
    std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = tls_get(p.listener("main"), &pki, opts("site.example.com"))
            .await
            .unwrap();
        if r.peer == second.der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken key file: the reload is refused and the last good certificate keeps serving.
    std::fs::write(&second.key, "not a key").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p
        .admin("/stats/prometheus")
        .await
        .contains("sluice_config_reload_failed_total 1\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "broken key was not rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = tls_get(p.listener("main"), &pki, opts("site.example.com"))
        .await
        .unwrap();
    assert_eq!((r.status, r.peer), (200, second.der));
}

/// Upstream TLS checked as Envoy checks it, by real Envoy and by Sluice on the same bootstrap:
/// the chain against `trusted_ca` when one is given (any certificate without it), the names
/// against `match_typed_subject_alt_names` / `match_subject_alt_names`, and never the `sni`
/// against the certificate. Both present a client certificate, which the upstream requires.
async fn upstream_tls_checks(kind: &str) {
    let pki = Pki::new();
    let backend = pki.issue(
        "backend",
        &[
            "backend.internal",
            "spiffe://cluster.local/ns/shop/sa/backend",
        ],
    );
    let client = pki.issue("proxy-client", &["proxy.internal"]);
    let other_ca = Pki::new();
    let up = tls_upstream("secure-backend", &pki, &backend).await;
    let cases: [(&str, Value, u16); 7] = [
        ("secure", json!({"trusted_ca": {"filename": pki.ca()}}), 200),
        ("unverified", Value::Null, 200),
        (
            "wrong-ca",
            json!({"trusted_ca": {"filename": other_ca.ca()}}),
            503,
        ),
        (
            "spiffe",
            json!({"trusted_ca": {"filename": pki.ca()}, "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/shop/"}}]}),
            200,
        ),
        (
            "wrong-san",
            json!({"trusted_ca": {"filename": pki.ca()}, "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": "other.internal"}}]}),
            503,
        ),
        (
            "legacy-san",
            json!({"trusted_ca": {"filename": pki.ca()},
                   "match_subject_alt_names": [{"exact": "backend.internal"}]}),
            200,
        ),
        // Another name in `sni` than the certificate's: Envoy does not compare them.
        (
            "other-sni",
            json!({"trusted_ca": {"filename": pki.ca()}}),
            200,
        ),
    ];
    let mut clusters = Vec::new();
    let mut route_list = Vec::new();
    for (name, validation, _) in &cases {
        let mut common = json!({
            "tls_certificates": [{"certificate_chain": {"filename": client.cert}, "private_key": {"filename": client.key}}]
        });
        if !validation.is_null() {
            common["validation_context"] = validation.clone();
        }
        let sni = if *name == "other-sni" {
            "other.internal"
        } else {
            "backend.internal"
        };
        let mut c = cluster(name, &[up.0.port()]);
        c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": common
        }});
        clusters.push(c);
        route_list
            .push(json!({"match": {"prefix": format!("/{name}")}, "route": {"cluster": name}}));
    }
    let p = proxy_of(
        kind,
        &bootstrap(routes(json!(route_list)), clusters, json!({})),
    )
    .await;
    let cl = client_h1();
    for (name, _, want) in &cases {
        let r = get(&cl, &p.url("main", &format!("/{name}")), &[]).await;
        assert_eq!(r.status, *want, "{kind} {name}: {:?}", r.body);
        if *want == 200 {
            assert_eq!(r.upstream(), "secure-backend", "{kind} {name}");
            // Each cluster has its own connections, so this request made a new one.
            let sni = if *name == "other-sni" {
                "other.internal"
            } else {
                "backend.internal"
            };
            assert_eq!(
                up.1.lock().unwrap().as_deref(),
                Some(sni),
                "{kind} {name}: SNI sent upstream"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_checks_upstream_certificates() {
    upstream_tls_checks("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_checks_upstream_certificates_as_envoy_does() {
    upstream_tls_checks("sluice").await;
}

/// An X.509 v1 certificate (what `openssl x509 -req` makes without extensions; Envoy's own
/// examples ship some) is served, and a key that is not the certificate's is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_certificate_is_served_and_a_foreign_key_refused() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let v1 = Issued {
        cert: fixtures.join("x509-v1.pem"),
        key: fixtures.join("x509-v1.key"),
        der: CertificateDer::from_pem_file(fixtures.join("x509-v1.pem")).unwrap(),
    };
    let up = upstream("app").await;
    let p = sluice(&tls_bootstrap(
        vec![(vec![], downstream_tls(&v1, json!({})))],
        vec![cluster("app", &[up.port()])],
        "app",
    ))
    .await;
    let port = p.listener("main").port();
    let body = curl_json(&v1.cert, "v1.example.com", port);
    assert_eq!(body["upstream"], "app");

    let pki = Pki::new();
    let foreign = pki.issue("foreign", &["v1.example.com"]);
    for cert in [&v1, &foreign] {
        let wrong = Issued {
            cert: cert.cert.clone(),
            key: if std::ptr::eq(cert, &v1) {
                foreign.key.clone()
            } else {
                v1.key.clone()
            },
            der: cert.der.clone(),
        };
        let file = pki.dir.path().join("mismatch.json");
        std::fs::write(
            &file,
            tls_bootstrap(
                vec![(vec![], downstream_tls(&wrong, json!({})))],
                vec![cluster("app", &[up.port()])],
                "app",
            ),
        )
        .unwrap();
        let out = std::process::Command::new(sluice_bin())
            .args(["proxy", "--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(
                "tls_certificates[0].private_key: the private key does not match the certificate"
            ),
            "{text}"
        );
    }
}

/// An echo upstream behind TLS that requires a client certificate from `pki`; records the SNI.
async fn tls_upstream(
    name: &str,
    pki: &Pki,
    cert: &Issued,
) -> (Upstream, Arc<std::sync::Mutex<Option<String>>>) {
    let plain = upstream(name).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(std::sync::Mutex::new(None));
    let seen = sni.clone();
    let target = plain.addr;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                *seen.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_string);
                // Relay the decrypted bytes to the plain echo upstream.
                if let Ok(mut inner) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
                }
            });
        }
    });
    let _keep = plain;
    (Upstream::wrap(addr, name, task, _keep), sni)
}

/// An Istio Gateway with two HTTPS servers on one port (certificates from files, chosen by SNI),
/// translated by `sluice control` and served by real Envoy and by `sluice proxy`: `curl
/// --cacert` reaches each host's service through its own certificate; an `httpsRedirect` server
/// sends plain HTTP to HTTPS.
async fn https_gateway(kind: &str) {
    let pki = Pki::new();
    let shop = pki.issue("shop", &["shop.example.com"]);
    let api = pki.issue("api", &["api.example.com"]);
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let gw = closed_port();
    let plain = closed_port();
    let mut config = render(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{gw}}, name: https-shop, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, serverCertificate: "{{shop_cert}}", privateKey: "{{shop_key}}"}
  - port: {number: {{gw}}, name: https-api, protocol: HTTPS}
    hosts: [api.example.com]
    tls: {mode: SIMPLE, serverCertificate: "{{api_cert}}", privateKey: "{{api_key}}"}
  - port: {number: {{plain}}, name: http-redirect, protocol: HTTP}
    hosts: [shop.example.com, old.example.com]
    tls: {httpsRedirect: true}
"#,
        &[
            ("gw", gw.to_string()),
            ("plain", plain.to_string()),
            ("shop_cert", shop.cert.display().to_string()),
            ("shop_key", shop.key.display().to_string()),
            ("api_cert", api.cert.display().to_string()),
            ("api_key", api.key.display().to_string()),
        ],
    );
    for (name, port) in [("shop", v1.port()), ("api", v2.port())] {
        config.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example.com]\n  gateways: [gw]\n  http: [{{route: [{{destination: {{host: {name}}}}}]}}]\n"
        ));
    }
    let control = ControlPlane::start(&[("gateway.yaml", config)]);
    let _proxy = gateway_proxy(kind, control.xds).await;
    control
        .wait_synced(1, std::time::Duration::from_secs(10))
        .await;
    for (host, want) in [("shop.example.com", "v1"), ("api.example.com", "v2")] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-D", "-", "--cacert"])
            .arg(pki.ca())
            .args([
                "--resolve",
                &format!("{host}:{gw}:127.0.0.1"),
                &format!("https://{host}:{gw}/"),
            ])
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(
            out.status.success(),
            "{kind} {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("x-upstream: {want}")),
            "{kind} {host}: {text}"
        );
    }
    // `httpsRedirect`: plain HTTP to the redirect server's hosts, with a VirtualService (shop)
    // or without one (old), is sent to HTTPS.
    for host in ["shop.example.com", "old.example.com"] {
        let r = request(
            &client_h1(),
            "GET",
            &format!("http://127.0.0.1:{plain}/cart?x=1"),
            &format!("{host}:{plain}"),
            &[],
        )
        .await;
        assert_eq!(
            (
                r.status,
                r.headers.get("location").and_then(|v| v.to_str().ok())
            ),
            (
                301,
                Some(format!("https://{host}:{plain}/cart?x=1").as_str())
            ),
            "{kind} {host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_an_istio_https_gateway() {
    https_gateway("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_serves_an_istio_https_gateway() {
    https_gateway("sluice").await;
}

/// One listener with the TLS inspector and five chains: TLS for a.example.com; TLS for
/// b.example.com offering h2, and another for its other clients; TLS passthrough (`tcp_proxy`)
/// for pass.example.com to a TLS backend; plaintext (`raw_buffer`) for everything else. Each
/// chain routes to its own upstream, so the upstream's name tells which chain served.
fn inspector_bootstrap(pki_files: [&Issued; 2], ports: [u16; 5]) -> String {
    let [a, b] = pki_files;
    let names = ["a", "b-h2", "b", "plain"];
    let clusters: Vec<Value> = names
        .iter()
        .zip(ports)
        .map(|(n, port)| cluster(n, &[port]))
        .chain([cluster("pass", &[ports[4]])])
        .collect();
    let mut v: Value = serde_json::from_str(&bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}])),
        clusters,
        json!({}),
    ))
    .unwrap();
    let template = v["static_resources"]["listeners"][0]["filter_chains"][0].clone();
    let http = |cluster: &str, matching: Value, tls: Option<Value>| {
        let mut c = template.clone();
        c["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
            ["cluster"] = json!(cluster);
        c["filter_chain_match"] = matching;
        if let Some(t) = tls {
            c["transport_socket"] = t;
        }
        c
    };
    let chains = json!([
        http("a", json!({"server_names": ["a.example.com"]}), Some(downstream_tls(a, json!({})))),
        http("b-h2", json!({"server_names": ["b.example.com"], "application_protocols": ["h2"]}),
            Some(downstream_tls(b, json!({})))),
        http("b", json!({"server_names": ["b.example.com"]}), Some(downstream_tls(b, json!({})))),
        {"filter_chain_match": {"server_names": ["pass.example.com"]}, "filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "pass", "cluster": "pass"
            }
        }]},
        http("plain", json!({"transport_protocol": "raw_buffer"}), None),
    ]);
    v["static_resources"]["listeners"][0]["filter_chains"] = chains;
    v["static_resources"]["listeners"][0]["listener_filters"] = tls_inspector();
    v.to_string()
}

/// Which upstream answered each kind of client, or `refused`.
async fn inspected(kind: &str) -> Vec<String> {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.example.com"]);
    let b = pki.issue("b", &["b.example.com"]);
    let backend = pki.issue("backend", &["pass.example.com"]);
    let client = pki.issue("client", &["client.example.com"]);
    let ups = [
        upstream("a").await,
        upstream("b-h2").await,
        upstream("b").await,
        upstream("plain").await,
    ];
    let (pass, _) = tls_upstream("pass", &pki, &backend).await;
    let ports = [
        ups[0].port(),
        ups[1].port(),
        ups[2].port(),
        ups[3].port(),
        pass.port(),
    ];
    let p = proxy_of(kind, &inspector_bootstrap([&a, &b], ports)).await;
    let addr = p.listener("main");
    let mut out = Vec::new();
    let cases: [(&str, &[&[u8]]); 5] = [
        ("a.example.com", &[b"h2", b"http/1.1"]),
        ("b.example.com", &[b"h2", b"http/1.1"]),
        ("b.example.com", &[b"http/1.1"]),
        ("pass.example.com", &[b"http/1.1"]),
        ("other.example.com", &[b"http/1.1"]),
    ];
    for (sni, alpn) in cases {
        let o = ClientOptions {
            alpn,
            client_cert: Some(&client),
            ..opts(sni)
        };
        out.push(match tls_get(addr, &pki, o).await {
            Ok(r) => format!(
                "{sni} {:?} -> {}",
                String::from_utf8_lossy(alpn[0]),
                r.upstream_saw["upstream"]
            ),
            Err(_) => format!("{sni} -> refused"),
        });
    }
    let plain = get(&client_h1(), &p.url("main", "/"), &[]).await;
    out.push(format!("plaintext -> {}", plain.upstream()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_inspector_chooses_chains_as_envoy() {
    let envoy = inspected("envoy").await;
    assert_eq!(
        envoy,
        [
            "a.example.com \"h2\" -> \"a\"",
            "b.example.com \"h2\" -> \"b-h2\"",
            "b.example.com \"http/1.1\" -> \"b\"",
            "pass.example.com \"http/1.1\" -> \"pass\"",
            "other.example.com -> refused",
            "plaintext -> plain",
        ]
    );
    assert_eq!(inspected("sluice").await, envoy);
}

/// An Istio Gateway with a TLS PASSTHROUGH server routed by the SNI hosts of VirtualService
/// `tls` routes, and a TLS server terminated at the gateway whose decrypted bytes follow a
/// `tcp` route; which upstream answered each client, or `refused`.
async fn istio_tls_gateway(kind: &str, ip: &str) -> Vec<String> {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.example.com"]);
    let b = pki.issue("b", &["b.example.com"]);
    let term = pki.issue("term", &["tcp.example.com"]);
    let client = pki.issue("client", &["client.example.com"]);
    let (up_a, _) = tls_upstream("a", &pki, &a).await;
    let (up_b, _) = tls_upstream("b", &pki, &b).await;
    let plain = upstream("t").await;
    let (pass_port, term_port) = (closed_port(), closed_port());
    let config = render(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: {{pass}}, name: tls-pass, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: {{term}}, name: tls-term, protocol: TLS}
    hosts: [tcp.example.com]
    tls: {mode: SIMPLE, serverCertificate: "{{cert}}", privateKey: "{{key}}"}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sni}
spec:
  hosts: ["*.example.com"]
  gateways: [gw]
  tls:
  - match: [{port: {{pass}}, sniHosts: [a.example.com]}]
    route: [{destination: {host: a-backend, port: {number: 443}}}]
  - match: [{port: {{pass}}, sniHosts: [b.example.com]}]
    route: [{destination: {host: b-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: terminated}
spec:
  hosts: [tcp.example.com]
  gateways: [gw]
  tcp:
  - match: [{port: {{term}}}]
    route: [{destination: {host: plain-backend, port: {number: 80}}}]
"#,
        &[
            ("pass", pass_port.to_string()),
            ("term", term_port.to_string()),
            ("cert", term.cert.display().to_string()),
            ("key", term.key.display().to_string()),
        ],
    );
    let mut config = config;
    for (name, port, proto) in [
        ("a-backend", up_a.port(), "TLS"),
        ("b-backend", up_b.port(), "TLS"),
        ("plain-backend", plain.port(), "TCP"),
    ] {
        let number = if proto == "TLS" { 443 } else { 80 };
        config.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  ports: [{{number: {number}, name: p, protocol: {proto}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{p: {port}}}}}]\n"
        ));
    }
    let control = ControlPlane::start(&[("gateway.yaml", config)]);
    let meta = json!({"LABELS": {"istio": "ingressgateway"}, "SLUICE_GATEWAY_ADDRESS": ip});
    let _proxy = proxy_of(kind, &ads_bootstrap(control.xds, GATEWAY_NODE, meta)).await;
    control
        .wait_synced(1, std::time::Duration::from_secs(10))
        .await;
    let mut out = Vec::new();
    for (sni, port) in [
        ("a.example.com", pass_port),
        ("b.example.com", pass_port),
        ("c.example.com", pass_port),
        ("tcp.example.com", term_port),
    ] {
        let o = ClientOptions {
            alpn: &[b"http/1.1"],
            client_cert: Some(&client),
            ..opts(sni)
        };
        let addr = format!("{ip}:{port}").parse().unwrap();
        out.push(match tls_get(addr, &pki, o).await {
            Ok(r) => format!("{sni} -> {}", r.upstream_saw["upstream"]),
            Err(_) => format!("{sni} -> refused"),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_tls_passthrough_and_terminated_tcp_gateways_as_envoy() {
    let envoy = istio_tls_gateway("envoy", "127.0.0.2").await;
    assert_eq!(
        envoy,
        [
            "a.example.com -> \"a\"",
            "b.example.com -> \"b\"",
            "c.example.com -> refused",
            "tcp.example.com -> \"t\"",
        ]
    );
    assert_eq!(istio_tls_gateway("sluice", "127.0.0.1").await, envoy);
}

/// The RBAC filter reading the TLS connection: `authenticated.principal_name` (the client
/// certificate's URI SAN, DNS SAN or subject), `authenticated` without a name (any TLS
/// connection, with a certificate or not, as Envoy decides) and `requested_server_name` (the
/// SNI), on a listener that asks for client certificates without requiring them; Envoy and
/// Sluice must answer each client the same.
async fn rbac_over_tls(kind: &str) -> Vec<String> {
    let pki = Pki::new();
    let server = pki.issue("server", &["api.example.com", "open.example.com"]);
    let workload = pki.issue("workload", &["spiffe://example.org/ns/shop/sa/web"]);
    let other = pki.issue("other", &["other.example.com"]);
    let up = upstream("app").await;
    let socket = downstream_tls(
        &server,
        json!({"common_tls_context": {"validation_context": {"trusted_ca": {"filename": pki.ca()}}}}),
    );
    let mut b: Value = serde_json::from_str(&tls_bootstrap(
        vec![(vec![], socket)],
        vec![cluster("app", &[up.port()])],
        "app",
    ))
    .unwrap();
    let rules = json!({"action": "ALLOW", "policies": {
        "workloads": {
            "permissions": [{"any": true}],
            "principals": [{"authenticated": {"principal_name": {"prefix": "spiffe://example.org/ns/shop/"}}}]
        },
        "open-name": {
            "permissions": [{"requested_server_name": {"exact": "open.example.com"}}],
            "principals": [{"any": true}]
        },
        "any-certificate": {
            "permissions": [{"url_path": {"path": {"prefix": "/certified"}}}],
            "principals": [{"authenticated": {}}]
        }
    }});
    b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"] = json!([
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules": rules}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ]);
    let p = proxy_of(kind, &b.to_string()).await;
    let addr = p.listener("main");
    let mut out = Vec::new();
    for (sni, cert, path) in [
        ("api.example.com", Some(&workload), "/"),
        ("api.example.com", Some(&other), "/"),
        ("api.example.com", None, "/"),
        ("open.example.com", None, "/"),
        ("api.example.com", Some(&other), "/certified"),
        ("api.example.com", None, "/certified"),
    ] {
        let o = ClientOptions {
            alpn: &[b"http/1.1"],
            client_cert: cert,
            path,
            ..opts(sni)
        };
        let who = cert.map_or("no certificate", |c| {
            c.cert.file_stem().and_then(|s| s.to_str()).unwrap_or("?")
        });
        out.push(match tls_get(addr, &pki, o).await {
            Ok(r) => format!("{sni} {who} {path} -> {}", r.status),
            Err(e) => format!("{sni} {who} {path} -> {e}"),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_reads_client_certificates_and_sni_as_envoy() {
    let envoy = rbac_over_tls("envoy").await;
    assert_eq!(
        envoy,
        [
            "api.example.com workload / -> 200",
            "api.example.com other / -> 403",
            "api.example.com no certificate / -> 403",
            "open.example.com no certificate / -> 200",
            "api.example.com other /certified -> 200",
            "api.example.com no certificate /certified -> 200",
        ]
    );
    assert_eq!(rbac_over_tls("sluice").await, envoy);
}
