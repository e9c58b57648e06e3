//! A tiny HTTP upstream for demos and quick checks: answers every request with its name
//! (`v1\n`), and `x-upstream: NAME`. `sluice demo-upstream` runs it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Serve `name` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let body = Bytes::from(format!("{name}\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (body, name) = (body.clone(), name.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let mut r = Response::new(Full::new(body.clone()));
                *r.status_mut() = StatusCode::OK;
                if let Ok(v) = http::HeaderValue::from_str(&name) {
                    r.headers_mut().insert("x-upstream", v);
                }
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
