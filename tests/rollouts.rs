//! End to end: release tasks (Argo Rollouts) run by `sluice control`, through real proxies
//! (Envoy 1.40 and `sluice proxy`), checked with `sluice verify` at each step; crash recovery
//! with `kill -9`; blue-green under load; undo; API authentication.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// One scenario at a time: each starts several processes and checks traffic shares.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn corpus(file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/argo")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The Rollout's template with a `version` label added: endpoints of each version carry it.
fn with_version(text: &str, app: &str, version: &str) -> String {
    let from = format!("  template:\n    metadata:\n      labels:\n        app: {app}\n");
    assert!(text.contains(&from), "template labels of {app} not found");
    text.replace(&from, &format!("{from}        version: {version}\n"))
}

/// `sluice verify` against `url`; returns (exit code, counts by version).
fn verify(
    url: &str,
    n: u32,
    headers: &[&str],
    expect: &str,
) -> (i32, std::collections::BTreeMap<String, u64>) {
    let mut cmd = Command::new(sluice_bin());
    cmd.args([
        "verify",
        url,
        "-n",
        &n.to_string(),
        "--confidence",
        // About 30 checks per run: at 99.999 % each, the suite fails by chance once in 3,000 runs.
        "99.999",
        "--by",
        "header:x-upstream",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if !expect.is_empty() {
        cmd.args(["--expect", expect]);
    }
    let out = cmd.output().expect("sluice verify");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let counts = text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect();
    eprintln!("verify {url} {headers:?} expect {expect}:\n{text}");
    (out.status.code().unwrap_or(-1), counts)
}

fn rollout_cli(api: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new(sluice_bin())
        .args(["rollout", "--server", &api.to_string()])
        .args(args)
        .output()
        .expect("sluice rollout");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn rollout_json(control: &ControlPlane, name: &str) -> Value {
    let (ok, text) = rollout_cli(control.api, &["get", name, "-o", "json"]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Wait until the rollout reaches `phase` (and, if given, step), the test's proxy is connected,
/// and every connected proxy ACKed its weight.
async fn wait_for(control: &ControlPlane, name: &str, phase: &str, step: Option<u64>) -> Value {
    wait_with_proxies(control, name, phase, step, 1).await
}

/// [`wait_for`] with at least `min_proxies` connected. With none required, "every proxy ACKed"
/// holds trivially; so it would too for a proxy still reconnecting after a control-plane restart,
/// which would then be checked while it still serves the weights it had before.
async fn wait_with_proxies(
    control: &ControlPlane,
    name: &str,
    phase: &str,
    step: Option<u64>,
    min_proxies: u64,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = rollout_json(control, name).await;
        let connected = v["acked"]["proxies"].as_u64().unwrap_or(0);
        let acked = connected >= min_proxies
            && v["acked"]["synced"] == v["acked"]["proxies"]
            && v["acked"]["weight"] == v["desired_weight"]["canary"];
        if v["phase"] == phase && step.is_none_or(|s| v["step"] == s) && acked {
            // One more moment for the RDS ACK to be the one carrying the routes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {phase} {step:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The corpus subset-split Rollout (setWeight 10, pause) driven through a sidecar: the split at
/// each step, then a second release aborted, retried and promoted; and undo.
async fn subset_split(kind: &str) {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let v3 = upstream("v3").await;
    let base = corpus("examples__istio__istio-subset-split.yaml");
    let services = render(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: istio-subset-split}\nspec:\n  hosts: [istio-subset-split]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints:\n  - {address: 127.0.0.1, ports: {http: {{v1}}}, labels: {app: istio-subset-split, version: v1}}\n  - {address: 127.0.0.1, ports: {http: {{v2}}}, labels: {app: istio-subset-split, version: v2}}\n  - {address: 127.0.0.1, ports: {http: {{v3}}}, labels: {app: istio-subset-split, version: v3}}\n",
        &[("v1", v1.port().to_string()), ("v2", v2.port().to_string()), ("v3", v3.port().to_string())],
    );
    let file = |v: &str| with_version(&base, "istio-subset-split", v);
    let control = ControlPlane::start_with(
        &[("app.yaml", file("v1")), ("services.yaml", services)],
        &["--data-dir", "state"],
    );
    let outbound = closed_port();
    let metadata = json!({"SLUICE_OUTBOUND_ADDRESS": format!("127.0.0.1:{outbound}")});
    let _proxy = proxy_of(
        kind,
        &ads_bootstrap(
            control.xds,
            "sidecar~127.0.0.1~app.default~default.svc.cluster.local",
            metadata,
        ),
    )
    .await;
    let url = format!("http://127.0.0.1:{outbound}/");
    let host = "host: istio-subset-split";
    wait_for(&control, "istio-subset-split", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v1=100").0,
        0,
        "{kind}: before any release"
    );

    // Release v2: setWeight 10, then an indefinite pause.
    control.write("app.yaml", &file("v2"));
    wait_for(&control, "istio-subset-split", "Paused", Some(2)).await;
    let (code, counts) = verify(&url, 1000, &[host], "v1=90,v2=10");
    assert_eq!(code, 0, "{kind}: 90/10 at step 1: {counts:?}");
    assert_eq!(
        verify(&url, 1000, &[host], "v1=50,v2=50").0,
        1,
        "a wrong expectation fails"
    );
    let (ok, text) = rollout_cli(control.api, &["promote", "istio-subset-split"]);
    assert!(ok, "{text}");
    wait_for(&control, "istio-subset-split", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v2=100").0,
        0,
        "{kind}: v2 is stable"
    );

    // Release v3, abort (twice: idempotent), retry, promote to the end.
    control.write("app.yaml", &file("v3"));
    wait_for(&control, "istio-subset-split", "Paused", Some(2)).await;
    for _ in 0..2 {
        let (ok, text) = rollout_cli(control.api, &["abort", "istio-subset-split"]);
        assert!(ok, "{text}");
    }
    let v = wait_for(&control, "istio-subset-split", "Aborted", None).await;
    assert_eq!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["message"].as_str().unwrap_or("").starts_with("aborted"))
            .count(),
        1
    );
    assert_eq!(
        verify(&url, 200, &[host], "v2=100").0,
        0,
        "{kind}: aborted: all traffic on stable v2"
    );
    assert!(rollout_cli(control.api, &["retry", "istio-subset-split"]).0);
    wait_for(&control, "istio-subset-split", "Paused", Some(2)).await;
    assert_eq!(
        verify(&url, 1000, &[host], "v2=90,v3=10").0,
        0,
        "{kind}: retried at 10 %"
    );
    assert!(rollout_cli(control.api, &["promote", "--full", "istio-subset-split"]).0);
    wait_for(&control, "istio-subset-split", "Healthy", None).await;
    assert_eq!(verify(&url, 200, &[host], "v3=100").0, 0);

    // Undo: back to the last other completed revision (v2), through the steps.
    assert!(rollout_cli(control.api, &["undo", "istio-subset-split"]).0);
    let v = wait_for(&control, "istio-subset-split", "Paused", Some(2)).await;
    assert_eq!(v["canary_revision"]["labels"]["version"], "v2", "{v:#}");
    assert!(rollout_cli(control.api, &["promote", "istio-subset-split"]).0);
    wait_for(&control, "istio-subset-split", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v2=100").0,
        0,
        "{kind}: undone to v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_subset_split_release_abort_retry_undo() {
    let _serial = SERIAL.lock().await;
    subset_split("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_subset_split_release_abort_retry_undo() {
    let _serial = SERIAL.lock().await;
    subset_split("sluice").await;
}

/// The corpus header-routing Rollout (host split, `setHeaderRoute` on `agent`) through a
/// gateway: the split and the header routes at each step.
async fn header_routing(kind: &str) {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let gw = closed_port();
    let base = corpus("test__e2e__header-routing__istio-hr-host.yaml")
        .replace("        number: 80\n", &format!("        number: {gw}\n"));
    let file = |v: &str| with_version(&base, "rollouts-demo", v);
    let mut services = String::new();
    for host in ["stable-service", "canary-service"] {
        services.push_str(&render(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: {{host}}}\nspec:\n  hosts: [{{host}}]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: rollouts-demo}}\n---\n",
            &[("host", host.to_string())],
        ));
    }
    for (name, port) in [("v1", v1.port()), ("v2", v2.port())] {
        services.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: demo-{name}}}\nspec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: rollouts-demo, version: {name}}}}}\n---\n"
        ));
    }
    let control = ControlPlane::start_with(
        &[("app.yaml", file("v1")), ("services.yaml", services)],
        &[],
    );
    let _proxy = gateway_proxy(kind, control.xds).await;
    let url = format!("http://127.0.0.1:{gw}/");
    let host = "host: rollouts-demo.com";
    wait_for(&control, "rollouts-demo", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v1=100").0,
        0,
        "{kind}: the 80/20 in the file is the Rollout's to set: 100/0"
    );

    control.write("app.yaml", &file("v2"));
    wait_for(&control, "rollouts-demo", "Paused", Some(3)).await;
    assert_eq!(
        verify(&url, 1000, &[host], "v1=80,v2=20").0,
        0,
        "{kind}: step 1, 20 %"
    );
    assert_eq!(
        verify(&url, 100, &[host, "agent: firefox-99"], "v2=100").0,
        0,
        "{kind}: header route firefox"
    );
    let (_, counts) = verify(&url, 100, &[host, "agent: chrome-1"], "");
    assert!(
        counts.get("v1").copied().unwrap_or(0) > 50,
        "{kind}: chrome follows the weights: {counts:?}"
    );

    assert!(rollout_cli(control.api, &["promote", "rollouts-demo"]).0);
    wait_for(&control, "rollouts-demo", "Paused", Some(5)).await;
    assert_eq!(
        verify(&url, 100, &[host, "agent: chrome-1"], "v2=100").0,
        0,
        "{kind}: header route now chrome"
    );

    assert!(rollout_cli(control.api, &["promote", "rollouts-demo"]).0);
    wait_for(&control, "rollouts-demo", "Paused", Some(8)).await;
    assert_eq!(
        verify(&url, 1000, &[host], "v1=60,v2=40").0,
        0,
        "{kind}: 40 %"
    );
    let (_, counts) = verify(&url, 100, &[host, "agent: chrome-1"], "");
    assert!(
        counts.get("v1").copied().unwrap_or(0) > 30,
        "{kind}: header route removed: {counts:?}"
    );

    assert!(rollout_cli(control.api, &["promote", "rollouts-demo"]).0);
    wait_for(&control, "rollouts-demo", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v2=100").0,
        0,
        "{kind}: released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_header_routing_release() {
    let _serial = SERIAL.lock().await;
    header_routing("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_header_routing_release() {
    let _serial = SERIAL.lock().await;
    header_routing("sluice").await;
}

fn timed_rollout(version: &str) -> String {
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
      steps:
      - setWeight: 30
      - pause: {{duration: 15s}}
      - setWeight: 60
      - pause: {{}}
"#
    )
}

/// `kill -9` the control plane during a timed pause: after a restart the pause ends at its
/// original deadline, the release is at the same step, every step ran once, and the weights are
/// pushed again. Then kill it at an indefinite pause: still paused after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_resumes_the_release_where_it_was() {
    let _serial = SERIAL.lock().await;
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let gw = closed_port();
    let mut control = ControlPlane::start_with(
        &[
            ("mesh.yaml", demo_mesh(v1.port(), v2.port(), gw)),
            ("rollout.yaml", timed_rollout("v1")),
        ],
        &["--data-dir", "state"],
    );
    let _proxy = gateway_proxy("sluice", control.xds).await;
    let url = format!("http://127.0.0.1:{gw}/");
    wait_for(&control, "web", "Healthy", None).await;
    control.write("rollout.yaml", &timed_rollout("v2"));
    let v = wait_for(&control, "web", "Paused", Some(2)).await;
    let started = Instant::now();
    let remaining = v["pause_remaining_s"].as_f64().unwrap_or(0.0);
    // The pause must outlast the outage below: 2 s down, 1,000 checked requests, the restart,
    // and the proxy's reconnect backoff (up to 4 s by then).
    assert!(remaining > 12.0, "{v:#}");
    let deadline = started + Duration::from_secs_f64(remaining);

    control.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        verify(&url, 1000, &[], "v1=70,v2=30").0,
        0,
        "the proxy keeps the 30 % while the control plane is down"
    );
    control.restart();
    let v = wait_for(&control, "web", "Paused", Some(2)).await;
    assert_eq!(v["canary_revision"]["number"], 2);
    let left = v["pause_remaining_s"].as_f64().unwrap_or(0.0);
    let expected_left = deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    assert!(
        (left - expected_left).abs() < 1.0,
        "deadline moved: {left} s left, expected {expected_left:.1}"
    );

    let v = wait_for(&control, "web", "Paused", Some(4)).await;
    let late = Instant::now().saturating_duration_since(deadline);
    eprintln!("timed pause ended {late:?} after its original deadline (control plane down 2 s)");
    assert!(late < Duration::from_millis(1500), "{late:?}");
    assert_eq!(verify(&url, 1000, &[], "v1=40,v2=60").0, 0);
    let events = v["events"].as_array().cloned().unwrap_or_default();
    for step in [
        "step 1: canary weight 30%",
        "step 2: paused for 15s",
        "step 3: canary weight 60%",
        "step 4: paused until promoted",
    ] {
        let n = events.iter().filter(|e| e["message"] == step).count();
        assert_eq!(n, 1, "`{step}` ran {n} times: {events:#?}");
    }

    // Killed at an indefinite pause: paused after the restart, weights pushed again.
    control.kill();
    control.restart();
    wait_for(&control, "web", "Paused", Some(4)).await;
    let st = control.wait_synced(1, Duration::from_secs(10)).await;
    assert_eq!(st["proxies"].as_array().map(Vec::len), Some(1), "{st:#}");
    assert_eq!(verify(&url, 1000, &[], "v1=40,v2=60").0, 0);
}

/// Blue-green: the switch happens at promotion with zero failed requests under load; the
/// previous version stays reachable through the preview service during the scale-down delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_with_zero_failed_requests() {
    let _serial = SERIAL.lock().await;
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let gw = closed_port();
    let mesh = render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-active}
spec:
  hosts: [web-active]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-preview}
spec:
  hosts: [web-preview]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: blue}
spec: {address: 127.0.0.1, ports: {http: {{blue}}}, labels: {app: web, color: blue}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: green}
spec: {address: 127.0.0.1, ports: {http: {{green}}}, labels: {app: web, color: green}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: {{gw}}, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{headers: {preview: {exact: "1"}}}]
    route: [{destination: {host: web-preview}}]
  - route: [{destination: {host: web-active}}]
"#,
        &[
            ("blue", blue.port().to_string()),
            ("green", green.port().to_string()),
            ("gw", gw.to_string()),
        ],
    );
    let rollout = |color: &str| {
        format!("apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  template:\n    metadata: {{labels: {{app: web, color: {color}}}}}\n  strategy:\n    blueGreen: {{activeService: web-active, previewService: web-preview, autoPromotionEnabled: false, scaleDownDelaySeconds: 30}}\n")
    };
    let control = ControlPlane::start_with(
        &[("mesh.yaml", mesh), ("rollout.yaml", rollout("blue"))],
        &[],
    );
    let _proxy = gateway_proxy("sluice", control.xds).await;
    let url = format!("http://127.0.0.1:{gw}/");
    wait_for(&control, "web", "Healthy", None).await;
    assert_eq!(verify(&url, 100, &[], "blue=100").0, 0);

    control.write("rollout.yaml", &rollout("green"));
    wait_for(&control, "web", "Paused", None).await;
    assert_eq!(
        verify(&url, 100, &[], "blue=100").0,
        0,
        "active stays blue before promotion"
    );
    assert_eq!(
        verify(&url, 100, &["preview: 1"], "green=100").0,
        0,
        "preview shows green"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), url.clone());
        tokio::spawn(async move {
            let client = client_h1();
            let (mut ok, mut failed, mut green) = (0u64, 0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let r = get(&client, &url, &[]).await;
                if r.status == 200 {
                    ok += 1;
                    if r.upstream() == "green" {
                        green += 1;
                    }
                } else {
                    failed += 1;
                }
            }
            (ok, failed, green)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rollout_cli(control.api, &["promote", "web"]).0);
    wait_for(&control, "web", "Healthy", None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, green) = load.await.unwrap();
    eprintln!("blue-green switch under load: {ok} ok ({green} green), {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        green > 0 && green < ok,
        "the switch happened during the load"
    );
    assert_eq!(verify(&url, 100, &[], "green=100").0, 0, "active is green");
    assert_eq!(
        verify(&url, 100, &["preview: 1"], "blue=100").0,
        0,
        "blue stays reachable during the scale-down delay"
    );
}

/// With `--api-token-file`, mutating calls need the token; reading does not; the token is never
/// logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_is_required_for_changes() {
    let _serial = SERIAL.lock().await;
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let wrong_file = tokens.path().join("wrong");
    std::fs::write(&wrong_file, "guess").unwrap();
    let control = ControlPlane::start_with(
        &[
            ("mesh.yaml", demo_mesh(v1.port(), v2.port(), closed_port())),
            ("rollout.yaml", timed_rollout("v1")),
        ],
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    // No proxy in this test: only the API is exercised.
    wait_with_proxies(&control, "web", "Healthy", None, 0).await;
    control.write("rollout.yaml", &timed_rollout("v2"));
    wait_with_proxies(&control, "web", "Paused", Some(2), 0).await;
    let (ok, text) = rollout_cli(control.api, &["abort", "web"]);
    assert!(
        !ok && text.contains("401") && text.contains("unauthenticated"),
        "{text}"
    );
    let (ok, text) = rollout_cli(
        control.api,
        &["--token-file", wrong_file.to_str().unwrap(), "abort", "web"],
    );
    assert!(!ok && text.contains("401"), "{text}");
    assert_eq!(
        rollout_json(&control, "web").await["phase"],
        "Paused",
        "nothing changed"
    );
    // The same over gRPC (sluice.control.v1.Releases, on the same address).
    use sluice_proto::control::v1::releases_client::ReleasesClient;
    use sluice_proto::control::v1::{ListRequest, RolloutRef};
    let mut grpc = ReleasesClient::connect(format!("http://{}", control.api))
        .await
        .unwrap();
    let list = grpc.list(ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.rollouts.len(), 1);
    assert_eq!(
        (
            list.rollouts[0].phase.as_str(),
            list.rollouts[0].desired_canary_weight
        ),
        ("Paused", 30)
    );
    let web = RolloutRef {
        namespace: String::new(),
        name: "web".into(),
    };
    let mut watch = grpc.watch(web.clone()).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().phase, "Paused");
    let denied = grpc.pause(web.clone()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");
    let mut wrong = tonic::Request::new(web.clone());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    assert_eq!(
        grpc.abort(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        rollout_json(&control, "web").await["phase"],
        "Paused",
        "nothing changed"
    );
    let mut right = tonic::Request::new(web.clone());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let v = grpc.abort(right).await.unwrap().into_inner();
    assert_eq!((v.phase.as_str(), v.desired_canary_weight), ("Aborted", 0));
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.phase, "Aborted", "Watch streams the change");
    // And the CLI with the right token (abort is idempotent).
    let (ok, text) = rollout_cli(
        control.api,
        &["--token-file", token_file.to_str().unwrap(), "abort", "web"],
    );
    assert!(ok, "{text}");
    assert_eq!(rollout_json(&control, "web").await["phase"], "Aborted");
    assert!(
        !control.stderr().contains("s3cret"),
        "the token must not be logged"
    );
}

/// `sluice route set-weight` on a plain VirtualService, and `sluice rollout create` from the
/// form (`--steps 25:0,100`) on a mesh that has only the service and a gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_from_the_form_and_set_route_weights() {
    let _serial = SERIAL.lock().await;
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let gw = closed_port();
    let mesh = demo_mesh(v1.port(), v2.port(), gw).replace(
        "  subsets: [{name: stable, labels: {app: web}}, {name: canary, labels: {app: web}}]",
        "  subsets: [{name: stable, labels: {version: v1}}, {name: canary, labels: {version: v2}}]",
    );
    let control = ControlPlane::start_with(&[("mesh.yaml", mesh)], &["--data-dir", "state"]);
    let _proxy = gateway_proxy("sluice", control.xds).await;
    let url = format!("http://127.0.0.1:{gw}/");
    control.wait_synced(1, Duration::from_secs(10)).await;
    assert_eq!(verify(&url, 100, &[], "v1=100").0, 0);
    let set = |args: &[&str]| {
        let out = Command::new(sluice_bin())
            .args([
                "route",
                "--server",
                &control.api.to_string(),
                "set-weight",
                "web",
                "primary",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = set(&["stable=30", "canary=70"]);
    assert!(ok, "{text}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while verify(&url, 50, &[], "v2=100")
        .1
        .get("v1")
        .copied()
        .unwrap_or(0)
        > 30
    {
        assert!(Instant::now() < deadline);
    }
    assert_eq!(verify(&url, 1000, &[], "v1=30,v2=70").0, 0);
    let (ok, text) = set(&["stable=30", "canary=60"]);
    assert!(!ok && text.contains("add up to 90"), "{text}");
    let (ok, text) = set(&["stable=30", "blue=70"]);
    assert!(!ok && text.contains("no destination `blue`"), "{text}");

    // The form: a release of `web` named `checkout`, through the gateway.
    let service_only = demo_mesh(v1.port(), v2.port(), gw)
        .split("---\n")
        .filter(|d| d.contains("kind: ServiceEntry") || d.contains("kind: Gateway"))
        .collect::<Vec<_>>()
        .join("---\n");
    control.write("mesh.yaml", &service_only);
    let (ok, text) = rollout_cli(
        control.api,
        &[
            "create",
            "checkout",
            "--service",
            "web",
            "--stable-labels",
            "version=v1",
            "--canary-labels",
            "version=v2",
            "--steps",
            "25:0,100",
            "--gateway",
            "default/gw",
        ],
    );
    assert!(ok, "{text}");
    wait_for(&control, "checkout", "Paused", Some(2)).await;
    assert_eq!(verify(&url, 1000, &[], "v1=75,v2=25").0, 0);
    let (ok, text) = rollout_cli(
        control.api,
        &[
            "create",
            "checkout",
            "--service",
            "web",
            "--stable-labels",
            "version=v1",
            "--canary-labels",
            "version=v2",
            "--steps",
            "25",
        ],
    );
    assert!(!ok && text.contains("exists"), "{text}");
    let (ok, text) = rollout_cli(
        control.api,
        &[
            "create",
            "Checkout",
            "--service",
            "web",
            "--stable-labels",
            "version=v1",
            "--canary-labels",
            "version=v2",
            "--steps",
            "25",
        ],
    );
    assert!(!ok && text.contains("lowercase DNS label"), "{text}");
    assert!(rollout_cli(control.api, &["promote", "checkout"]).0);
    wait_for(&control, "checkout", "Healthy", None).await;
    assert_eq!(verify(&url, 200, &[], "v2=100").0, 0);
}

/// Argo's basic canary (no `trafficRouting`: the published `rollout-canary`), driven through a
/// sidecar: at setWeight 20 the endpoints of the two revisions split 80/20 (a ROUND_ROBIN load
/// balancer keeps endpoint weights), and a full promotion leaves only the new one.
async fn replica_canary(kind: &str) {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let base = corpus("examples__rollout-canary.yaml");
    let services = render(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: rollout-canary}\nspec:\n  hosts: [rollout-canary]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints:\n  - {address: 127.0.0.1, ports: {http: {{v1}}}, labels: {app: rollout-canary, version: v1}}\n  - {address: 127.0.0.1, ports: {http: {{v2}}}, labels: {app: rollout-canary, version: v2}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: rollout-canary}\nspec:\n  host: rollout-canary\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n",
        &[("v1", v1.port().to_string()), ("v2", v2.port().to_string())],
    );
    let file = |v: &str| with_version(&base, "rollout-canary", v);
    let control = ControlPlane::start(&[("app.yaml", file("v1")), ("services.yaml", services)]);
    let outbound = closed_port();
    let metadata = json!({"SLUICE_OUTBOUND_ADDRESS": format!("127.0.0.1:{outbound}")});
    let _proxy = proxy_of(
        kind,
        &ads_bootstrap(
            control.xds,
            "sidecar~127.0.0.1~app.default~default.svc.cluster.local",
            metadata,
        ),
    )
    .await;
    let url = format!("http://127.0.0.1:{outbound}/");
    let host = "host: rollout-canary";
    wait_for(&control, "rollout-canary", "Healthy", None).await;
    assert_eq!(verify(&url, 200, &[host], "v1=100").0, 0, "{kind}: before");
    control.write("app.yaml", &file("v2"));
    wait_for(&control, "rollout-canary", "Paused", Some(2)).await;
    let (code, counts) = verify(&url, 1000, &[host], "v1=80,v2=20");
    assert_eq!(code, 0, "{kind}: 80/20 at setWeight 20: {counts:?}");
    let (ok, text) = rollout_cli(control.api, &["promote", "--full", "rollout-canary"]);
    assert!(ok, "{text}");
    wait_for(&control, "rollout-canary", "Healthy", None).await;
    assert_eq!(
        verify(&url, 200, &[host], "v2=100").0,
        0,
        "{kind}: promoted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_replica_count_canary_by_endpoint_weights() {
    let _serial = SERIAL.lock().await;
    replica_canary("envoy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_replica_count_canary_by_endpoint_weights() {
    let _serial = SERIAL.lock().await;
    replica_canary("sluice").await;
}
