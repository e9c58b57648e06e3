//! Taking one measurement: a Prometheus instant query (`/api/v1/query`), a Prometheus range query
//! (`/api/v1/query_range`, its window's times evaluated now), or a web request whose JSON answer
//! is read at `jsonPath`. Every failure — connection refused, timeout, an HTTP
//! error, a Prometheus `error` status, an answer that is not what was asked — is an `Err`, which
//! the run counts as an Error measurement, never as a success or a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value as Json;
use sluice_config::analysis_expr::{now_s, Condition, Value};

use crate::analysis_run::Provider;

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&str>,
    timeout_s: u64,
    insecure: bool,
) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => Some(crate::provider_tls::client_config(insecure)?),
        _ => None,
    };
    exchange(method, uri, headers, body, timeout_s, tls).await
}

/// One request and its whole answer, over TLS when `tls` is given.
async fn exchange(
    method: &str,
    uri: http::Uri,
    headers: &[(String, String)],
    body: Option<&str>,
    timeout_s: u64,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(u16, Bytes), String> {
    let url = uri.to_string();
    let mut b = http::Request::builder().method(method).uri(uri.clone());
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if body.is_some() {
        b = b.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = match tls {
            None => client()
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?,
            Some(config) => https(&uri, req, config)
                .await
                .map_err(|e| format!("{url}: {e}"))?,
        };
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(timeout_s.max(1)), fut)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout_s} s"))?
}

/// Send `req` over a new TLS connection to the URI's host (port 443 by default), HTTP/1.1.
async fn https(
    uri: &http::Uri,
    mut req: http::Request<Full<Bytes>>,
    config: Arc<rustls::ClientConfig>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name `{host}`: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // The request line names the path; the host goes in `Host`.
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    if let Ok(v) = http::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse().map_err(|e| format!("{e}"))?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}

fn sample(v: &Json) -> Result<f64, String> {
    // Prometheus samples are `[timestamp, "value"]`; values may be "NaN", "+Inf", "-Inf".
    let text = v
        .get(1)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("unexpected sample {v}"))?;
    text.parse::<f64>()
        .map_err(|_| format!("sample value `{text}` is not a number"))
}

/// Read a Prometheus query answer: a vector is a list of its samples' values, a matrix (a range
/// query, or a range selector) the values of every series one after another, as Argo reads them;
/// a scalar is a number.
pub fn prometheus_value(body: &[u8]) -> Result<Value, String> {
    let v: Json =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus: {} {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("")
        ));
    }
    match v["data"]["resultType"].as_str() {
        Some("vector") => Ok(Value::List(
            v["data"]["result"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|s| sample(&s["value"]).map(Value::Number))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
        )),
        Some("matrix") => {
            let mut values = Vec::new();
            for series in v["data"]["result"].as_array().into_iter().flatten() {
                for s in series["values"].as_array().into_iter().flatten() {
                    values.push(Value::Number(sample(s)?));
                }
            }
            Ok(Value::List(values))
        }
        Some("scalar") => Ok(Value::Number(sample(&v["data"]["result"])?)),
        Some(other) => Err(format!(
            "Prometheus answered a {other}; use a vector, matrix or scalar query"
        )),
        None => Err("Prometheus answer without data.resultType".into()),
    }
}

/// The value at a JSONPath such as `{$.data.ok}`, `$.results[0].rate` or `$` (the whole answer).
pub fn json_path(body: &[u8], path: Option<&str>) -> Result<Value, String> {
    let v: Json =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let path = path
        .unwrap_or("$")
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim();
    let rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("jsonPath `{path}` must start with $"))?;
    let mut cur = &v;
    let mut chars = rest;
    while !chars.is_empty() {
        if let Some(r) = chars.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur
                .get(&r[..end])
                .ok_or_else(|| format!("jsonPath `{path}`: no `{}`", &r[..end]))?;
            chars = &r[end..];
        } else if let Some(r) = chars.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("jsonPath `{path}`: unclosed ["))?;
            let key = r[..end].trim_matches(['\'', '"']);
            cur = match key.parse::<usize>() {
                Ok(i) => cur.get(i),
                Err(_) => cur.get(key),
            }
            .ok_or_else(|| format!("jsonPath `{path}`: no [{key}]"))?;
            chars = &r[end + 1..];
        } else {
            return Err(format!("jsonPath `{path}`: cannot read `{chars}`"));
        }
    }
    Ok(to_value(cur))
}

fn to_value(v: &Json) -> Value {
    match v {
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::List(a.iter().map(to_value).collect()),
        Json::Null => Value::Number(f64::NAN),
        Json::Object(_) => Value::Str(v.to_string()),
    }
}

/// Take one measurement.
pub async fn measure(p: &Provider) -> Result<Value, String> {
    match p {
        Provider::Prometheus {
            address,
            query,
            timeout_s,
            headers,
            range,
            insecure,
        } => {
            let q: String = url_encode(query);
            let base = address.trim_end_matches('/');
            let url = match range {
                None => format!("{base}/api/v1/query?query={q}"),
                Some(r) => {
                    let now = now_s();
                    let time = |text: &str, what: &str| {
                        Condition::parse(text)
                            .map_err(|e| format!("rangeQuery.{what} `{text}`: {e}"))?
                            .evaluate_time(now)
                            .map_err(|e| format!("rangeQuery.{what} `{text}`: {e}"))
                    };
                    let (start, end) = (time(&r.start, "start")?, time(&r.end, "end")?);
                    format!(
                        "{base}/api/v1/query_range?query={q}&start={start:.3}&end={end:.3}&step={}",
                        r.step_s
                    )
                }
            };
            let (status, body) = request("GET", &url, headers, None, *timeout_s, *insecure).await?;
            if status >= 500 || status == 401 || status == 403 || status == 404 {
                return Err(format!("Prometheus answered HTTP {status}"));
            }
            prometheus_value(&body)
        }
        Provider::Web {
            url,
            method,
            headers,
            json_path: path,
            timeout_s,
            body,
            insecure,
        } => {
            let (status, answer) =
                request(method, url, headers, body.as_deref(), *timeout_s, *insecure).await?;
            if !(200..300).contains(&status) {
                return Err(format!("{url} answered HTTP {status}"));
            }
            json_path(&answer, path.as_deref())
        }
    }
}

/// Percent-encode a query string value.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.97"]}]}}"#;
        assert_eq!(
            prometheus_value(vector).unwrap(),
            Value::List(vec![Value::Number(0.97)])
        );
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(prometheus_value(empty).unwrap(), Value::List(vec![]));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(matches!(prometheus_value(nan).unwrap(), Value::Number(n) if n.is_nan()));
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(prometheus_value(err)
            .unwrap_err()
            .contains("bad_data parse error"));
        // A matrix is every sample of every series, one series after another (as Argo reads it).
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"s":"a"},"values":[[1,"10"],[61,"12"]]},
            {"metric":{"s":"b"},"values":[[61,"900"]]}]}}"#;
        assert_eq!(
            prometheus_value(matrix).unwrap(),
            Value::List(vec![
                Value::Number(10.0),
                Value::Number(12.0),
                Value::Number(900.0)
            ])
        );
        let string = br#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        assert!(prometheus_value(string).unwrap_err().contains("string"));
    }

    #[test]
    fn json_paths() {
        let body = br#"{"data":{"ok":true,"rates":[0.5,0.99],"name":"x"}}"#;
        assert_eq!(
            json_path(body, Some("{$.data.ok}")).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            json_path(body, Some("$.data.rates[1]")).unwrap(),
            Value::Number(0.99)
        );
        assert_eq!(
            json_path(body, Some("$.data['name']")).unwrap(),
            Value::Str("x".into())
        );
        assert!(json_path(body, Some("$.data.missing")).is_err());
        assert_eq!(url_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }

    /// A one-route HTTP server answering `status` and `body` (or never, with `hang`).
    async fn server(status: u16, body: &'static str, hang: bool) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn measurements_over_http() {
        let web = server(200, r#"{"data":{"ok":true}}"#, false).await;
        let p = Provider::Web {
            url: format!("http://{web}/health"),
            method: "GET".into(),
            headers: vec![("x-tenant".into(), "a".into())],
            json_path: Some("{$.data.ok}".into()),
            timeout_s: 2,
            body: None,
            insecure: false,
        };
        assert_eq!(measure(&p).await, Ok(Value::Bool(true)));

        let prom = server(200, r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.5"]}]}}"#, false).await;
        let q = |address: String| Provider::Prometheus {
            address,
            query: "sum(rate(x[1m]))".into(),
            timeout_s: 1,
            headers: vec![],
            range: None,
            insecure: false,
        };
        assert_eq!(
            measure(&q(format!("http://{prom}"))).await,
            Ok(Value::List(vec![Value::Number(0.5)]))
        );

        let down = server(503, "", false).await;
        assert!(measure(&q(format!("http://{down}")))
            .await
            .unwrap_err()
            .contains("HTTP 503"));
        let slow = server(200, "{}", true).await;
        assert!(measure(&q(format!("http://{slow}")))
            .await
            .unwrap_err()
            .contains("no answer within 1 s"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            measure(&q(format!("http://{closed}"))).await.is_err(),
            "connection refused is an error"
        );
        assert!(
            measure(&q("https://127.0.0.1:1".into())).await.is_err(),
            "nothing listens there"
        );
    }

    /// An HTTPS server (a certificate for 127.0.0.1 signed by a fresh CA) answering `body`;
    /// returns its address and the CA certificate.
    async fn https_server(
        body: &'static str,
    ) -> (
        std::net::SocketAddr,
        rustls_pki_types::CertificateDer<'static>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| async move {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        // `echo`: what the request line and `Host` said.
                        let answer = if body == "echo" {
                            format!("{host} {}", req.uri())
                        } else {
                            body.to_string()
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(answer),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, ca.der().clone())
    }

    #[tokio::test]
    async fn https_providers_check_the_certificate_unless_insecure() {
        let (addr, ca) = https_server(r#"{"data":{"ok":true}}"#).await;
        let url = format!("https://{addr}/health?x=1");
        // Trusting the CA: the certificate and its address are checked, the path is sent.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let trusted = crate::provider_tls::verifying(roots).unwrap();
        let (status, body) = exchange("GET", url.parse().unwrap(), &[], None, 5, Some(trusted))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &br#"{"data":{"ok":true}}"#[..]));
        // The request line carries the path and query, `Host` the authority.
        let (echo, echo_ca) = https_server("echo").await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(echo_ca).unwrap();
        let (_, said) = exchange(
            "GET",
            format!("https://{echo}/api/v1/query?query=up")
                .parse()
                .unwrap(),
            &[],
            None,
            5,
            Some(crate::provider_tls::verifying(roots).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(
            &said[..],
            format!("{echo} /api/v1/query?query=up").as_bytes()
        );
        // Another CA: refused, an Error measurement.
        let (_, other_ca) = https_server("").await;
        let mut other = rustls::RootCertStore::empty();
        other.add(other_ca).unwrap();
        let e = exchange(
            "GET",
            url.parse().unwrap(),
            &[],
            None,
            5,
            Some(crate::provider_tls::verifying(other).unwrap()),
        )
        .await
        .unwrap_err();
        assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
        // `insecure: true` accepts it, as Argo's InsecureSkipVerify does.
        let p = Provider::Web {
            url: url.clone(),
            method: "GET".into(),
            headers: vec![],
            json_path: Some("$.data.ok".into()),
            timeout_s: 5,
            body: None,
            insecure: true,
        };
        assert_eq!(measure(&p).await, Ok(Value::Bool(true)));
    }
}
