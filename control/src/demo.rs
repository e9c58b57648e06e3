//! `sluice demo`: the whole product on one machine. It starts, as child processes of the same
//! binary, two demo upstreams (answering `v1` and `v2`), the control plane on `examples/demo`
//! (a `web` service, its subsets, a VirtualService and a Rollout), and a gateway proxy that takes
//! its configuration from the control plane over ADS; then prints what to try.
//! `--scripted` runs a whole canary instead — 20 % → pause → 50 % → 100 % — verifying the split
//! at each step, then an abort, and succeeds only if every check held.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api_client::ApiClient;
use crate::verify::{self, VerifyOptions, VersionFrom};

const MESH: &str = include_str!("../../examples/demo/mesh.yaml");
const ROLLOUT: &str = include_str!("../../examples/demo/rollout.yaml");
const GATEWAY: &str = include_str!("../../examples/demo/gateway.yaml");

/// Where the demo listens.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub gateway: SocketAddr,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub scripted: bool,
    /// Keep the files (configuration, state, logs) here instead of a temporary directory.
    pub work_dir: Option<PathBuf>,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what} did not come up within {secs} s (logs in {dir})")]
    Timeout {
        what: String,
        secs: u64,
        dir: String,
    },
    #[error("API: {0}")]
    Api(#[from] crate::api_client::ApiClientError),
    #[error("verify: {0}")]
    Verify(#[from] verify::VerifyError),
    #[error("{0} check(s) failed")]
    Failed(usize),
}

/// The child processes, stopped when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
}

async fn wait_until<F, Fut>(what: &str, dir: &Path, mut ready: F) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ready().await {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::Timeout {
                what: what.into(),
                secs: 60,
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Run the demo (until Ctrl-C, or to the end of the script).
pub async fn run(o: DemoOptions) -> Result<(), DemoError> {
    let exe = std::env::current_exe()?;
    let tmp;
    let dir = match &o.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp.clone()
        }
    };
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    let (v1, v2) = (free_port()?, free_port()?);
    let fill = |t: &str| {
        t.replace("{{V1_PORT}}", &v1.to_string())
            .replace("{{V2_PORT}}", &v2.to_string())
            .replace("{{GATEWAY_PORT}}", &o.gateway.port().to_string())
            .replace("{{XDS_HOST}}", &o.xds.ip().to_string())
            .replace("{{XDS_PORT}}", &o.xds.port().to_string())
    };
    std::fs::write(config.join("mesh.yaml"), fill(MESH))?;
    std::fs::write(config.join("rollout.yaml"), ROLLOUT)?;
    std::fs::write(dir.join("gateway.yaml"), fill(GATEWAY))?;
    let mut children = Children(Vec::new());
    for (name, port) in [("v1", v1), ("v2", v2)] {
        let listen = format!("127.0.0.1:{port}");
        children.0.push(spawn(
            &exe,
            &["demo-upstream", "--listen", &listen, "--name", name],
            &dir.join(format!("upstream-{name}.log")),
        )?);
    }
    let (xds, api) = (o.xds.to_string(), o.api.to_string());
    let config_dir = config.display().to_string();
    let state = dir.join("state").display().to_string();
    children.0.push(spawn(
        &exe,
        &[
            "control",
            "--config-dir",
            &config_dir,
            "--xds-address",
            &xds,
            "--api-address",
            &api,
            "--data-dir",
            &state,
        ],
        &dir.join("control.log"),
    )?);
    let bootstrap = dir.join("gateway.yaml").display().to_string();
    children.0.push(spawn(
        &exe,
        &[
            "proxy",
            "-c",
            &bootstrap,
            "--concurrency",
            "1",
            "-l",
            "warn",
        ],
        &dir.join("proxy.log"),
    )?);

    let client = ApiClient {
        server: api.clone(),
        token: None,
        user: Some("demo".into()),
    };
    wait_until("the control plane", &dir, || async {
        client.get("/api/v1/rollouts/default/web").await.is_ok()
    })
    .await?;
    let url: http::Uri = format!("http://{}/", o.gateway)
        .parse()
        .map_err(|e: http::uri::InvalidUri| std::io::Error::other(e))?;
    let probe = url.clone();
    wait_until("the gateway", &dir, || {
        let probe = probe.clone();
        async move {
            // Ready when requests are answered by an upstream (not refused, not 404 while the
            // gateway's routes are still on their way).
            share(&probe, 5, &[])
                .await
                .map(|(n, shares)| {
                    n == 5
                        && shares
                            .iter()
                            .all(|s| s.version == "v1" || s.version == "v2")
                })
                .unwrap_or(false)
        }
    })
    .await?;

    if o.scripted {
        return scripted(&client, &url, &config).await;
    }
    let sluice = exe.display();
    println!(
        r#"Sluice demo is running (files and logs in {dir}):
  gateway     http://{gw}/          (sluice proxy, configured over xDS)
  control     xDS {xds}, API http://{api}/
  upstreams   v1 on 127.0.0.1:{v1}, v2 on 127.0.0.1:{v2}

Try:
  for i in $(seq 100); do curl -s {gw}/; done | sort | uniq -c
  {sluice} verify http://{gw}/ -n 1000 --expect v1=100
  {sluice} rollout get web --watch --server {api}

Start a release (the GitOps way, or through the API):
  sed -i 's/version: v1/version: v2/' {config}/rollout.yaml
  {sluice} verify http://{gw}/ -n 1000 --expect v1=80,v2=20
  curl -s -H 'lane: canary' {gw}/            # the header route pins the canary
  {sluice} rollout promote web --server {api}      # 50 %, then 10 s, then 100 %
  {sluice} rollout abort web --server {api}        # or back to stable at once
  {sluice} proxy-status --server {api}

Ctrl-C stops everything."#,
        dir = dir.display(),
        gw = o.gateway,
        config = config.display(),
    );
    // Stop on Ctrl-C or SIGTERM; the children are stopped when `children` drops.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    drop(children);
    Ok(())
}

/// Send `n` requests; the share each version got (from the body).
async fn share(
    url: &http::Uri,
    n: u64,
    headers: &[(&str, &str)],
) -> Result<(u64, Vec<verify::Share>), verify::VerifyError> {
    let o = VerifyOptions {
        url: url.clone(),
        requests: n,
        concurrency: 8,
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    http::HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        by: VersionFrom::Body,
        expect: Default::default(),
        z: verify::z_for(99.99).unwrap_or(verify::Z99),
    };
    let (n, shares) = verify::run(&o).await?;
    Ok((
        n,
        shares
            .into_iter()
            .filter(|s| !s.version.is_empty())
            .collect(),
    ))
}

async fn wait_phase(
    client: &ApiClient,
    phase: &str,
    step: Option<u64>,
) -> Result<Value, DemoError> {
    let start = Instant::now();
    loop {
        let v = client.get("/api/v1/rollouts/default/web").await?;
        // The demo's proxy must be connected: with none, "every proxy ACKed" holds trivially.
        let acked = v["acked"]["proxies"].as_u64().unwrap_or(0) >= 1
            && v["acked"]["synced"] == v["acked"]["proxies"]
            && v["acked"]["weight"] == v["desired_weight"]["canary"];
        if v["phase"] == phase && step.is_none_or(|s| v["step"] == s) && acked {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(v);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::Timeout {
                what: format!("phase {phase}"),
                secs: 60,
                dir: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One checked step of the script: the share of each expected version, 99.99 % intervals.
async fn check(
    url: &http::Uri,
    label: &str,
    headers: &[(&str, &str)],
    expect: &[(&str, f64)],
) -> Result<bool, DemoError> {
    let n = if expect.iter().all(|(_, p)| *p == 100.0 || *p == 0.0) {
        200
    } else {
        2000
    };
    let (total, shares) = share(url, n, headers).await?;
    let mut ok = true;
    let mut line = format!("{label:<40}");
    for (version, pct) in expect {
        let k = shares
            .iter()
            .find(|s| s.version == *version)
            .map(|s| s.count)
            .unwrap_or(0);
        let (lo, hi) = verify::wilson(k, total, verify::z_for(99.99).unwrap_or(verify::Z99));
        let inside = (lo - 1e-9..=hi + 1e-9).contains(&(pct / 100.0));
        ok &= inside;
        line.push_str(&format!(
            "  {version} {:>5.1}% (expected {pct:.0}%, 99.99 % interval {:.1}-{:.1}%)",
            k as f64 * 100.0 / total.max(1) as f64,
            lo * 100.0,
            hi * 100.0
        ));
    }
    println!("{} {line}", if ok { "ok  " } else { "FAIL" });
    Ok(ok)
}

async fn scripted(client: &ApiClient, url: &http::Uri, config: &Path) -> Result<(), DemoError> {
    let rollout = config.join("rollout.yaml");
    let set_version = |v: &str| -> std::io::Result<()> {
        let text = std::fs::read_to_string(&rollout)?;
        let next = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("labels: {app: web, version:") {
                    format!("      labels: {{app: web, version: {v}}}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&rollout, next + "\n")
    };
    let mut failed = 0;
    let mut tally = |ok: bool| {
        if !ok {
            failed += 1;
        }
    };
    wait_phase(client, "Healthy", None).await?;
    tally(check(url, "before the release", &[], &[("v1", 100.0)]).await?);
    println!("---- release v2: edit rollout.yaml (version: v2)");
    set_version("v2")?;
    wait_phase(client, "Paused", Some(3)).await?;
    tally(
        check(
            url,
            "step 1: setWeight 20",
            &[],
            &[("v1", 80.0), ("v2", 20.0)],
        )
        .await?,
    );
    tally(
        check(
            url,
            "step 2: header route lane=canary",
            &[("lane", "canary")],
            &[("v2", 100.0)],
        )
        .await?,
    );
    println!("---- promote (ends the pause)");
    client
        .post(
            "/api/v1/rollouts/default/web/promote",
            serde_json::json!({}),
        )
        .await?;
    wait_phase(client, "Paused", Some(5)).await?;
    tally(
        check(
            url,
            "step 4: setWeight 50 (10 s pause)",
            &[],
            &[("v1", 50.0), ("v2", 50.0)],
        )
        .await?,
    );
    wait_phase(client, "Healthy", None).await?;
    tally(
        check(
            url,
            "step 6: setWeight 100, v2 stable",
            &[],
            &[("v2", 100.0)],
        )
        .await?,
    );
    println!("---- release v1 again, then abort");
    set_version("v1")?;
    wait_phase(client, "Paused", Some(3)).await?;
    tally(
        check(
            url,
            "step 1: setWeight 20",
            &[],
            &[("v2", 80.0), ("v1", 20.0)],
        )
        .await?,
    );
    client
        .post("/api/v1/rollouts/default/web/abort", serde_json::json!({}))
        .await?;
    wait_phase(client, "Aborted", None).await?;
    tally(
        check(
            url,
            "aborted: all traffic back to stable",
            &[],
            &[("v2", 100.0)],
        )
        .await?,
    );
    if failed == 0 {
        println!("all checks held");
        Ok(())
    } else {
        Err(DemoError::Failed(failed))
    }
}
