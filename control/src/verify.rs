//! `sluice verify`: send N requests and report the share each version got, with a 99 %
//! confidence interval (Wilson score), checking expectations such as `v1=80,v2=20`. The version
//! is read from the response body (trimmed) or a header.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::sync::Mutex;

/// z for a two-sided 99 % interval (the default).
pub const Z99: f64 = 2.576;

/// z for a two-sided interval at `percent` confidence (90, 95, 99, 99.9, 99.99 or 99.999).
/// The last two suit scripts that make many checks in a row and must not fail by chance.
pub fn z_for(percent: f64) -> Option<f64> {
    [
        (90.0, 1.645),
        (95.0, 1.960),
        (99.0, 2.576),
        (99.9, 3.291),
        (99.99, 3.891),
        (99.999, 4.417),
    ]
    .into_iter()
    .find(|(p, _)| (p - percent).abs() < 1e-9)
    .map(|(_, z)| z)
}

/// What identifies the version in a response.
#[derive(Debug, Clone)]
pub enum VersionFrom {
    Body,
    Header(http::HeaderName),
}

/// A verification run.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub url: http::Uri,
    pub requests: u64,
    pub concurrency: usize,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub by: VersionFrom,
    /// Expected percentage per version.
    pub expect: BTreeMap<String, f64>,
    /// z of the confidence interval ([`Z99`] for 99 %).
    pub z: f64,
}

/// One version's observed share.
#[derive(Debug, Clone)]
pub struct Share {
    pub version: String,
    pub count: u64,
    pub low: f64,
    pub high: f64,
    pub expected: Option<f64>,
    pub ok: bool,
}

/// The Wilson score interval of `k` successes in `n` for `z`, as fractions.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * ((p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n);
    // At the edges the interval reaches 0 or 1 exactly (floating point would leave it short).
    let low = if k == 0.0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if k == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    (low, high)
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Request(String),
}

/// Send the requests (bounded concurrency) and tally the versions; errors count as `error`.
pub async fn run(o: &VerifyOptions) -> Result<(u64, Vec<Share>), VerifyError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (client, counts, next, o) = (client.clone(), counts.clone(), next.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < o.requests {
                let mut b = http::Request::get(o.url.clone());
                for (k, v) in &o.headers {
                    b = b.header(k, v);
                }
                let version = match b.body(Empty::<Bytes>::new()) {
                    Err(e) => format!("error: {e}"),
                    Ok(req) => match client.request(req).await {
                        Err(_) => "error".to_string(),
                        Ok(resp) => {
                            let header = match &o.by {
                                VersionFrom::Header(h) => Some(
                                    resp.headers()
                                        .get(h)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("-")
                                        .to_string(),
                                ),
                                VersionFrom::Body => None,
                            };
                            let status = resp.status();
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            match header {
                                Some(h) => h,
                                None if status.is_success() => {
                                    String::from_utf8_lossy(&body).trim().to_string()
                                }
                                None => format!("HTTP {}", status.as_u16()),
                            }
                        }
                    },
                };
                *counts.lock().await.entry(version).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| VerifyError::Request(e.to_string()))?;
    }
    let counts = counts.lock().await.clone();
    let n: u64 = counts.values().sum();
    let mut versions: Vec<String> = counts.keys().cloned().collect();
    for v in o.expect.keys() {
        if !counts.contains_key(v) {
            versions.push(v.clone());
        }
    }
    let shares = versions
        .into_iter()
        .map(|v| {
            let k = counts.get(&v).copied().unwrap_or(0);
            let (low, high) = wilson(k, n, o.z);
            let expected = o.expect.get(&v).copied();
            // A hair of tolerance for percentages written with few digits (33.3 for 1/3).
            let ok = expected.is_none_or(|e| (low - 1e-9..=high + 1e-9).contains(&(e / 100.0)));
            Share {
                version: v,
                count: k,
                low,
                high,
                expected,
                ok,
            }
        })
        .collect();
    Ok((n, shares))
}

/// The report printed by `sluice verify`.
pub fn render(n: u64, shares: &[Share], confidence: f64) -> String {
    let mut out = format!(
        "{n} requests\n{:<16} {:>7} {:>8}   {:<17} {}\n",
        "VERSION",
        "COUNT",
        "SHARE",
        format!("{confidence} % INTERVAL"),
        "EXPECTED"
    );
    for s in shares {
        let share = if n == 0 {
            0.0
        } else {
            s.count as f64 * 100.0 / n as f64
        };
        let expected = match s.expected {
            Some(e) => format!("{e:.0}%  {}", if s.ok { "ok" } else { "OUTSIDE" }),
            None => String::new(),
        };
        out.push_str(&format!(
            "{:<16} {:>7} {:>7.1}%   [{:>5.1}%, {:>5.1}%]  {}\n",
            s.version,
            s.count,
            share,
            s.low * 100.0,
            s.high * 100.0,
            expected
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(200, 1000, Z99);
        assert!(lo < 0.2 && hi > 0.2 && hi - lo < 0.07, "{lo} {hi}");
        let (lo, hi) = wilson(0, 1000, Z99);
        assert_eq!(lo, 0.0);
        assert!(hi < 0.01);
        let (lo, hi) = wilson(1000, 1000, Z99);
        assert!(lo > 0.99 && hi == 1.0);
        let (_, hi) = wilson(50, 50, Z99);
        assert_eq!(hi, 1.0, "100 % expected of 50/50 is inside");
        // 250 of 1000 is not consistent with 20 %.
        let (lo, _) = wilson(250, 1000, Z99);
        assert!(lo > 0.2);
    }
}
