//! The client side of the control plane's HTTP API, used by `sluice rollout` and
//! `sluice proxy-status`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot reach the control plane at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("{status}: {message}")]
    Status {
        status: http::StatusCode,
        message: String,
    },
    #[error("the control plane's answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub server: String,
    pub token: Option<String>,
    /// Sent as `x-sluice-user`, recorded in the event history.
    pub user: Option<String>,
}

impl ApiClient {
    /// Call `method path` with an optional body; a non-2xx answer is an error carrying the
    /// server's message.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<Value, ApiClientError> {
        let stream = tokio::net::TcpStream::connect(&self.server)
            .await
            .map_err(|source| ApiClientError::Connect {
                server: self.server.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.server);
        if let Some(t) = &self.token {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(u) = &self.user {
            b = b.header("x-sluice-user", u);
        }
        let (bytes, content_type) = body.unwrap_or((Bytes::new(), "application/json"));
        let req = b
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(bytes))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&body)?;
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(ApiClientError::Status { status, message });
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiClientError> {
        self.call(http::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ApiClientError> {
        let bytes = Bytes::from(serde_json::to_vec(&body)?);
        self.call(http::Method::POST, path, Some((bytes, "application/json")))
            .await
    }
}
