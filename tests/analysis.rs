//! End to end: analysis with a real Prometheus (Debian's `prometheus`) scraping a real
//! `sluice proxy` every second, the proxy driven by `sluice control`, traffic from the test.
//! A healthy canary passes and completes; a canary answering 500 to half its requests fails its
//! analysis and is rolled back automatically (the time from the failing measurement to all
//! traffic on stable is measured); Prometheus stopped mid-release gives errors and the
//! documented outcome (abort), never a silent success; the unmodified success-rate template of
//! the corpus (its address pointed at this Prometheus) drives a release, and so does its
//! range-query template, which also fails a release when any point of its window is too slow.

mod support;

use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An upstream answering `name`; with `fail_every = n`, every n-th request gets a 500.
async fn app(
    name: &'static str,
    fail_every: u64,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    let status = if fail_every > 0 && n.is_multiple_of(fail_every) {
                        500
                    } else {
                        200
                    };
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The canary's success rate over the last 5 s, by Istio's standard metric.
fn canary_template(prom: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: canary-success}}
spec:
  args: [{{name: service}}]
  metrics:
  - name: success-rate
    interval: 1s
    # The canary's series needs two scrapes (1 s apart) before a rate exists; on a slow machine
    # an early measurement is empty, which is Inconclusive: tolerate a few.
    initialDelay: 1s
    inconclusiveLimit: 3
    successCondition: result[0] >= 0.95
{extra}    provider:
      prometheus:
        address: http://{prom}
        query: |
          sum(rate(istio_requests_total{{reporter="source",destination_service="{{{{args.service}}}}",destination_version="canary",response_code!~"5.*"}}[5s]))
          /
          sum(rate(istio_requests_total{{reporter="source",destination_service="{{{{args.service}}}}",destination_version="canary"}}[5s]))
"#
    )
}

fn rollout(version: &str, steps: &str, background: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  template:
    metadata: {{labels: {{app: web, version: {version}}}}}
  strategy:
    canary:
      trafficRouting:
        istio:
          virtualService: {{name: web, routes: [primary]}}
          destinationRule: {{name: web, canarySubsetName: canary, stableSubsetName: stable}}
{background}      steps: {steps}
"#
    )
}

const STEP_ANALYSIS: &str = "[{setWeight: 50}, {pause: {duration: 3s}}, {analysis: {templates: [{templateName: canary-success}], args: [{name: service, value: web.default.svc.cluster.local}]}}, {setWeight: 100}, {pause: {}}]";

struct Setup {
    control: ControlPlane,
    _proxy: ProxyProcess,
    prom: Prometheus,
    url: String,
    stop: Arc<AtomicBool>,
    load: tokio::task::JoinHandle<(u64, u64)>,
    _apps: Vec<tokio::task::JoinHandle<()>>,
}

/// Control plane, gateway proxy scraped by Prometheus, and steady traffic through the gateway.
async fn setup(
    v2_fail_every: u64,
    template: impl Fn(std::net::SocketAddr) -> String,
    steps: &str,
    background: &str,
) -> Setup {
    setup_scraping(v2_fail_every, template, steps, background, &[]).await
}

/// [`setup`], with Prometheus also scraping `extra` targets.
async fn setup_scraping(
    v2_fail_every: u64,
    template: impl Fn(std::net::SocketAddr) -> String,
    steps: &str,
    background: &str,
    extra: &[std::net::SocketAddr],
) -> Setup {
    let (v1, a1) = app("v1", 0).await;
    let (v2, a2) = app("v2", v2_fail_every).await;
    let gw = closed_port();
    // Prometheus is started after the proxy (it needs the admin address) but the template needs
    // Prometheus' address: reserve it first.
    let prom_port = closed_port();
    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let control = ControlPlane::start_with(
        &[
            ("mesh.yaml", demo_mesh(v1.port(), v2.port(), gw)),
            ("analysis.yaml", template(prom_addr)),
            ("rollout.yaml", rollout("v1", steps, background)),
        ],
        &["--data-dir", "state"],
    );
    let proxy = gateway_proxy("sluice", control.xds).await;
    let targets: Vec<std::net::SocketAddr> = std::iter::once(proxy.admin)
        .chain(extra.iter().copied())
        .collect();
    let prom = Prometheus::start_at(&targets, prom_addr).await;
    let url = format!("http://127.0.0.1:{gw}/");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), url.clone());
        tokio::spawn(async move {
            let client = client_h1();
            let (mut ok, mut err) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.get(url.parse().unwrap()).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => err += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, err)
        })
    };
    // Scrapes of the stable traffic exist before any release starts.
    prom.wait_for(
        "sum(irate(istio_requests_total{reporter=\"source\"}[5m]))",
        Duration::from_secs(30),
    )
    .await;
    Setup {
        control,
        _proxy: proxy,
        prom,
        url,
        stop,
        load,
        _apps: vec![a1, a2],
    }
}

fn get_rollout(control: &ControlPlane) -> Value {
    let out = Command::new(sluice_bin())
        .args([
            "rollout",
            "--server",
            &control.api.to_string(),
            "get",
            "web",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn wait_phase(control: &ControlPlane, phases: &[&str], limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = get_rollout(control);
        if phases.iter().any(|p| v["phase"] == *p) {
            return v;
        }
        assert!(Instant::now() < deadline, "never reached {phases:?}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(
    control: &ControlPlane,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = get_rollout(control);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until v2 is the stable revision, or the release was rolled back.
async fn wait_released_or_degraded(control: &ControlPlane) -> Value {
    wait_until(
        control,
        "released or degraded",
        Duration::from_secs(40),
        |v| {
            v["phase"] == "Degraded"
                || (v["phase"] == "Healthy" && v["stable_revision"]["labels"]["version"] == "v2")
        },
    )
    .await
}

fn set_version(control: &ControlPlane, version: &str, steps: &str, background: &str) {
    control.write("rollout.yaml", &rollout(version, steps, background));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_passes_analysis_and_completes() {
    let _serial = SERIAL.lock().await;
    let s = setup(
        0,
        |p| canary_template(p, "    count: 3\n"),
        STEP_ANALYSIS,
        "",
    )
    .await;
    wait_phase(&s.control, &["Healthy"], Duration::from_secs(15)).await;
    set_version(&s.control, "v2", STEP_ANALYSIS, "");
    let v = wait_until(
        &s.control,
        "at the final pause or degraded",
        Duration::from_secs(40),
        |v| v["phase"] == "Degraded" || (v["phase"] == "Paused" && v["step"] == 5),
    )
    .await;
    assert_eq!(v["phase"], "Paused", "{v:#}");
    assert_eq!(v["step"], 5, "analysis passed, 100 %, final pause: {v:#}");
    let run = &v["analysis"][0];
    assert_eq!(run["phase"], "Successful", "{run:#}");
    let m0 = &run["metrics"][0];
    assert_eq!(m0["failed"], 0, "{m0:#}");
    assert!(m0["successful"].as_u64().unwrap_or(0) >= 1, "{m0:#}");
    let m = &run["metrics"][0]["measurements"][0];
    assert!(
        m["value"].as_str().unwrap_or("").starts_with("[1"),
        "a success rate of 1: {m:#}"
    );
    s.stop.store(true, Ordering::Relaxed);
    let (ok, err) = s.load.await.unwrap();
    assert_eq!(err, 0, "{ok} ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_automatically() {
    let _serial = SERIAL.lock().await;
    // v2 answers 500 to every 2nd request: a 50 % success rate.
    let s = setup(
        2,
        |p| canary_template(p, "    count: 3\n"),
        STEP_ANALYSIS,
        "",
    )
    .await;
    wait_phase(&s.control, &["Healthy"], Duration::from_secs(15)).await;
    set_version(&s.control, "v2", STEP_ANALYSIS, "");
    let v = wait_phase(&s.control, &["Degraded"], Duration::from_secs(40)).await;
    let failed_at = v["analysis"][0]["metrics"][0]["measurements"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["phase"] == "Failed"))
        .and_then(|x| x["at_ms"].as_u64())
        .expect("a failed measurement");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("analysis Failed"),
        "{v:#}"
    );
    assert_eq!(v["desired_weight"]["canary"], 0);
    // Time from the failing measurement to all traffic on stable at the proxy.
    let client = client_h1();
    let mut run = 0;
    let stable_at = loop {
        let r = get(&client, &s.url, &[]).await;
        run = if r.upstream() == "v1" { run + 1 } else { 0 };
        if run == 50 {
            break std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
        }
    };
    let rollback_ms = stable_at.saturating_sub(failed_at);
    eprintln!(
        "failing measurement -> 100 % stable at the proxy (50 requests in a row): {rollback_ms} ms"
    );
    assert!(rollback_ms < 5_000, "{rollback_ms} ms");
    s.stop.store(true, Ordering::Relaxed);
    let _ = s.load.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_mid_release_aborts_never_succeeds() {
    let _serial = SERIAL.lock().await;
    let steps = "[{setWeight: 50}, {pause: {duration: 3s}}, {analysis: {templates: [{templateName: canary-success}], args: [{name: service, value: web.default.svc.cluster.local}]}}, {setWeight: 100}]";
    let mut s = setup(0, |p| canary_template(p, "    count: 30\n"), steps, "").await;
    wait_phase(&s.control, &["Healthy"], Duration::from_secs(15)).await;
    set_version(&s.control, "v2", steps, "");
    // Let a few measurements succeed, then stop Prometheus.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_rollout(&s.control);
        if v["analysis"][0]["metrics"][0]["successful"]
            .as_u64()
            .unwrap_or(0)
            >= 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful measurement: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.prom.kill();
    let v = wait_phase(
        &s.control,
        &["Degraded", "Healthy"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        v["phase"], "Degraded",
        "errors must not end in success: {v:#}"
    );
    let metric = &v["analysis"][0]["metrics"][0];
    assert_eq!(v["analysis"][0]["phase"], "Error", "{v:#}");
    assert!(
        metric["errors"].as_u64().unwrap_or(0) >= 5,
        "consecutiveErrorLimit 4: the 5th error ends it: {metric:#}"
    );
    assert_eq!(metric["failed"], 0, "errors are not failures");
    s.stop.store(true, Ordering::Relaxed);
    let _ = s.load.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_success_rate_template_drives_a_release() {
    let _serial = SERIAL.lock().await;
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/argo/docs__analysis__prometheus.md.block0-success-rate.yaml"),
    )
    .unwrap();
    assert!(corpus.contains("address: http://prometheus.example.com:9090"));
    // Only the address changes: it names this test's Prometheus.
    let template = move |p: std::net::SocketAddr| {
        corpus.replace("http://prometheus.example.com:9090", &format!("http://{p}"))
    };
    let background = "      analysis:\n        templates: [{templateName: success-rate}]\n        args: [{name: service-name, value: web.default.svc.cluster.local}]\n";
    let steps = "[{setWeight: 50}, {pause: {duration: 8s}}, {setWeight: 100}]";
    let s = setup(0, template, steps, background).await;
    wait_phase(&s.control, &["Healthy"], Duration::from_secs(15)).await;
    set_version(&s.control, "v2", steps, background);
    let v = wait_released_or_degraded(&s.control).await;
    assert_eq!(v["phase"], "Healthy", "{v:#}");
    assert_eq!(v["stable_revision"]["labels"]["version"], "v2");
    let run = &v["analysis"][0];
    let m = &run["metrics"][0];
    assert!(
        m["successful"].as_u64().unwrap_or(0) >= 1,
        "measured with the corpus query: {run:#}"
    );
    assert_eq!(m["failed"], 0);
    assert_eq!(
        run["phase"], "Successful",
        "stopped at the end of the release: {run:#}"
    );
    s.stop.store(true, Ordering::Relaxed);
    let _ = s.load.await;
}

/// A scrape target exporting the gauge `http_latency_ms{service="web.default.svc.cluster.local"}`
/// (the series the corpus' range-query template reads) at `/stats/prometheus`, valued `ms`.
async fn latency_exporter(
    ms: Arc<AtomicU64>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ms = ms.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = format!(
                        "# TYPE http_latency_ms gauge\nhttp_latency_ms{{service=\"web.default.svc.cluster.local\"}} {}\n",
                        ms.load(Ordering::Relaxed)
                    );
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn corpus_range_query_template() -> String {
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/argo/docs__analysis__prometheus.md.block1-range-query.yaml"),
    )
    .unwrap();
    assert!(corpus.contains("address: http://prometheus.example.com:9090"));
    assert!(corpus.contains(r#"successCondition: "all(result, # < 1000)""#));
    corpus
}

/// [`setup`] with `template` (its address pointed at the test's Prometheus) as the background
/// analysis and a latency exporter at 20 ms, once Prometheus has its series and v1 is Healthy.
async fn range_query_setup(
    template: String,
) -> (Setup, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let template = move |p: std::net::SocketAddr| {
        template.replace("http://prometheus.example.com:9090", &format!("http://{p}"))
    };
    let ms = Arc::new(AtomicU64::new(20));
    let (exporter, task) = latency_exporter(ms.clone()).await;
    let s = setup_scraping(0, template, RANGE_STEPS, RANGE_BACKGROUND, &[exporter]).await;
    s.prom
        .wait_for("http_latency_ms", Duration::from_secs(30))
        .await;
    wait_phase(&s.control, &["Healthy"], Duration::from_secs(15)).await;
    (s, ms, task)
}

const RANGE_BACKGROUND: &str = "      analysis:\n        templates: [{templateName: range-query-example}]\n        args: [{name: service-name, value: web.default.svc.cluster.local}]\n";
const RANGE_STEPS: &str = "[{setWeight: 50}, {pause: {duration: 8s}}, {setWeight: 100}]";

/// Argo's published range-query template, only its address changed: every sample of the last
/// five minutes (`now() - duration("5m")` to `now()`, step 1m) is under 1000 ms, so the release
/// completes, and the measurement is the window's samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_range_query_template_drives_a_release() {
    let _serial = SERIAL.lock().await;
    let (s, _ms, _e) = range_query_setup(corpus_range_query_template()).await;
    set_version(&s.control, "v2", RANGE_STEPS, RANGE_BACKGROUND);
    let v = wait_released_or_degraded(&s.control).await;
    assert_eq!(v["phase"], "Healthy", "{v:#}");
    let run = &v["analysis"][0];
    assert_eq!(run["phase"], "Successful", "{run:#}");
    let m = &run["metrics"][0]["measurements"][0];
    assert_eq!(m["phase"], "Successful", "{m:#}");
    let value = m["value"].as_str().unwrap_or("");
    assert!(value.starts_with("[20") && value.ends_with("20]"), "{m:#}");
    s.stop.store(true, Ordering::Relaxed);
    let _ = s.load.await;
}

/// The same template with a 1 s step and no tolerated failure: the latency was 20 ms, then 1500 ms
/// just before the release. An instant query would see only 1500; the range query sees both,
/// `all(result, # < 1000)` is false, and the release is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_query_sees_the_whole_window_and_fails_the_release() {
    let _serial = SERIAL.lock().await;
    let template = corpus_range_query_template()
        .replace("failureLimit: 3", "failureLimit: 0")
        .replace("step: 1m", "step: 1s");
    let (s, ms, _e) = range_query_setup(template).await;
    ms.store(1500, Ordering::Relaxed);
    s.prom
        .wait_for("http_latency_ms == 1500", Duration::from_secs(30))
        .await;
    set_version(&s.control, "v2", RANGE_STEPS, RANGE_BACKGROUND);
    let v = wait_phase(&s.control, &["Degraded"], Duration::from_secs(40)).await;
    let run = &v["analysis"][0];
    assert_eq!(run["phase"], "Failed", "{run:#}");
    let m = &run["metrics"][0]["measurements"][0];
    assert_eq!(m["phase"], "Failed", "{m:#}");
    let value = m["value"].as_str().unwrap_or("");
    assert!(
        value.starts_with("[20") && value.ends_with("1500]"),
        "the window holds the old and the new latency: {m:#}"
    );
    assert_eq!(v["desired_weight"]["canary"], 0, "{v:#}");
    s.stop.store(true, Ordering::Relaxed);
    let _ = s.load.await;
}

/// A sidecar in front of its workload reports inbound requests with `reporter="destination"`,
/// `destination_workload` and `destination_workload_namespace`, so Flagger's built-in
/// request-success-rate query (on destination-side metrics) works against Sluice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaggers_destination_side_query_sees_sidecar_inbound_traffic() {
    let _serial = SERIAL.lock().await;
    let (app_addr, _app) = app("v1", 2).await; // every 2nd request fails: 50 %
    let mesh = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: web, version: v1}}}}]\n",
        app_addr.port()
    );
    let control = ControlPlane::start(&[("mesh.yaml", mesh)]);
    let (outbound, inbound) = (closed_port(), closed_port());
    let metadata = serde_json::json!({
        "SLUICE_OUTBOUND_ADDRESS": format!("127.0.0.1:{outbound}"),
        "SLUICE_INBOUND_ADDRESS": format!("127.0.0.1:{inbound}"),
        "SLUICE_APP_ADDRESS": app_addr.to_string(),
        "LABELS": {"app": "web", "version": "v1"},
        "WORKLOAD_NAME": "web",
        "NAMESPACE": "default",
    });
    let proxy = proxy_of(
        "sluice",
        &ads_bootstrap(
            control.xds,
            "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local",
            metadata,
        ),
    )
    .await;
    let prom = Prometheus::start(&[proxy.admin]).await;
    let client = client_h1();
    let url = format!("http://127.0.0.1:{inbound}/");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut statuses = std::collections::BTreeMap::new();
    while Instant::now() < deadline {
        *statuses
            .entry(get(&client, &url, &[]).await.status)
            .or_insert(0u32) += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        statuses.get(&500).copied().unwrap_or(0) > 10
            && statuses.get(&200).copied().unwrap_or(0) > 10,
        "{statuses:?}"
    );
    let stats = proxy.admin("/stats/prometheus").await;
    let line = stats
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"500\"")
        })
        .unwrap_or_else(|| panic!("no destination-side series:\n{stats}"));
    for label in [
        "destination_workload=\"web\"",
        "destination_workload_namespace=\"default\"",
        "destination_service=\"web.default.svc.cluster.local\"",
    ] {
        assert!(line.contains(label), "{label} missing: {line}");
    }
    // Flagger's request-success-rate, as its built-in template writes it.
    let q = "sum(rate(istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"default\",destination_workload=~\"web\",response_code!~\"5.*\"}[5s])) / sum(rate(istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"default\",destination_workload=~\"web\"}[5s]))";
    prom.wait_for(q, Duration::from_secs(20)).await;
    let v = prom.query(q).await;
    let rate: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("nan")
        .parse()
        .unwrap_or(f64::NAN);
    eprintln!("Flagger's success rate over the sidecar's inbound traffic: {rate:.3}");
    assert!((0.4..=0.6).contains(&rate), "{v}");
}
