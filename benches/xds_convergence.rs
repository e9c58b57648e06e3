//! Control-plane convergence: N simulated ADS clients (default 1,000) on one `sluice control`,
//! each following Envoy's protocol (CDS + LDS wildcard, then EDS and RDS by name, ACKing every
//! response). A weight is edited in the YAML; the time from the edit to each client's ACK of the
//! new route configuration is recorded. Reports p50 / p99 / max over several edits, and the
//! control plane's resident memory per connected proxy.
//!
//! `cargo bench --bench xds_convergence` (`-- --clients 200 --edits 3` to change the load).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sluice_proto::envoy::envoy::config::cluster::v3::Cluster;
use sluice_proto::envoy::envoy::config::core::v3::Node;
use sluice_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sluice_proto::envoy::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn mesh(w1: u32) -> String {
    let mut s = String::new();
    // 20 services with two subsets each, so a push is not trivially small.
    for i in 0..20 {
        s.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}}}\nspec:\n  hosts: [svc{i}]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: 9}}, labels: {{version: v1}}}}\n  - {{address: 127.0.0.2, ports: {{http: 9}}, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}}}\nspec:\n  host: svc{i}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n"
        ));
    }
    s.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: 18080, name: http, protocol: HTTP}}, hosts: [\"*\"]}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc0}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - {{destination: {{host: svc0, subset: v1}}, weight: {w1}}}\n    - {{destination: {{host: svc0, subset: v2}}, weight: {}}}\n",
        100 - w1
    ));
    s
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One simulated proxy: returns when told to stop. Each RDS ACK is reported with its version.
async fn client(
    id: usize,
    xds: String,
    acks: mpsc::UnboundedSender<(usize, String, Instant)>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(xds)
        .map(|e| e.connect_timeout(Duration::from_secs(10)))
    else {
        return;
    };
    let Ok(channel) = channel.connect().await else {
        eprintln!("client {id}: cannot connect");
        return;
    };
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let node = Node {
        id: format!("router~127.0.0.1~gw-{id}.istio-system~istio-system.svc.cluster.local"),
        metadata: Some(sluice_proto::envoy::google::protobuf::Struct {
            fields: [(
                "LABELS".to_string(),
                sluice_proto::envoy::google::protobuf::Value {
                    kind: Some(sluice_proto::envoy::google::protobuf::value::Kind::StructValue(
                        sluice_proto::envoy::google::protobuf::Struct {
                            fields: [(
                                "istio".to_string(),
                                sluice_proto::envoy::google::protobuf::Value {
                                    kind: Some(sluice_proto::envoy::google::protobuf::value::Kind::StringValue("ingressgateway".into())),
                                },
                            )]
                            .into(),
                        },
                    )),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let req = |type_url: &str, version: &str, nonce: &str, names: Vec<String>| DiscoveryRequest {
        version_info: version.into(),
        node: Some(node.clone()),
        resource_names: names,
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let _ = tx.send(req(CDS, "", "", vec![])).await;
    let _ = tx.send(req(LDS, "", "", vec![])).await;
    let Ok(resp) = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut inbound = resp.into_inner();
    let mut eds_names: BTreeSet<String> = BTreeSet::new();
    let mut rds_subscribed = false;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = stop.changed() => return,
        };
        let Ok(Some(r)) = msg else { return };
        let names = match r.type_url.as_str() {
            EDS => eds_names.iter().cloned().collect(),
            RDS => vec!["http.18080".to_string()],
            _ => vec![],
        };
        let _ = tx
            .send(req(&r.type_url, &r.version_info, &r.nonce, names))
            .await;
        if r.type_url == RDS {
            let _ = acks.send((id, r.version_info.clone(), Instant::now()));
        }
        if r.type_url == CDS {
            let names: BTreeSet<String> = r
                .resources
                .iter()
                .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
                .map(|c| c.name)
                .collect();
            if names != eds_names {
                eds_names = names;
                let _ = tx
                    .send(req(EDS, "", "", eds_names.iter().cloned().collect()))
                    .await;
            }
        }
        if r.type_url == LDS && !rds_subscribed {
            rds_subscribed = true;
            let _ = tx.send(req(RDS, "", "", vec!["http.18080".into()])).await;
        }
    }
}

fn main() {
    let clients = arg("--clients", 1000);
    let edits = arg("--edits", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(&cfg).expect("config dir");
    std::fs::write(cfg.join("mesh.yaml"), mesh(100)).expect("write mesh");
    let address_file = dir.path().join("addresses.json");
    let mut control = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["control", "--config-dir"])
        .arg(&cfg)
        .args([
            "--xds-address",
            "127.0.0.1:0",
            "--api-address",
            "127.0.0.1:0",
            "-l",
            "warn",
            "--address-file",
        ])
        .arg(&address_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice control");
    let deadline = Instant::now() + Duration::from_secs(30);
    let xds = loop {
        if let Ok(t) = std::fs::read_to_string(&address_file) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                break format!("http://{}", v["xds"].as_str().unwrap_or(""));
            }
        }
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(200));
    let idle_rss = rss_kib(control.id());

    let results = rt.block_on(async {
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let latest: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(vec![String::new(); clients]));
        let connect_start = Instant::now();
        for id in 0..clients {
            tokio::spawn(client(id, xds.clone(), ack_tx.clone(), stop_rx.clone()));
        }
        // Wait for every client's first RDS ACK.
        let mut synced = 0;
        while synced < clients {
            let Ok(Some((id, version, _))) =
                tokio::time::timeout(Duration::from_secs(60), ack_rx.recv()).await
            else {
                panic!("only {synced} of {clients} clients synced");
            };
            let mut l = latest.lock().await;
            if l[id].is_empty() {
                synced += 1;
            }
            l[id] = version;
        }
        let initial_sync = connect_start.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connected_rss = rss_kib(control.id());
        let mut lat = Vec::new();
        let mut last_acks = Vec::new();
        for edit in 0..edits {
            let w1 = if edit % 2 == 0 { 90 } else { 100 };
            let t0 = Instant::now();
            std::fs::write(cfg.join("mesh.yaml"), mesh(w1)).expect("edit");
            let mut seen = vec![false; clients];
            let mut n = 0;
            let mut version = None::<String>;
            let mut last = Duration::ZERO;
            while n < clients {
                let Ok(Some((id, v, at))) =
                    tokio::time::timeout(Duration::from_secs(30), ack_rx.recv()).await
                else {
                    panic!("edit {edit}: only {n} of {clients} clients got the new routes");
                };
                let before = latest.lock().await[id].clone();
                if v == before {
                    continue;
                }
                latest.lock().await[id] = v.clone();
                version.get_or_insert(v);
                if !seen[id] {
                    seen[id] = true;
                    n += 1;
                    let d = at.duration_since(t0);
                    last = last.max(d);
                    lat.push(d);
                }
            }
            last_acks.push(last);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let _ = stop_tx.send(true);
        (initial_sync, connected_rss, lat, last_acks)
    });
    let (initial_sync, connected_rss, mut lat, last_acks) = results;
    let _ = control.kill();
    let _ = control.wait();
    lat.sort();
    let per_proxy = connected_rss.saturating_sub(idle_rss) as f64 / clients as f64;
    println!("xDS convergence: {clients} ADS clients (gateway role), 20 services x 2 subsets, {edits} weight edits");
    println!(
        "  initial sync of all clients: {:.0} ms",
        initial_sync.as_secs_f64() * 1e3
    );
    println!(
        "  edit -> RDS ACK per client: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (includes the 50 ms directory poll and 10 ms debounce)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    let mut last_sorted = last_acks.clone();
    last_sorted.sort();
    println!(
        "  edit -> last ACK of all {clients}: {}",
        last_acks
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  control plane RSS: {:.1} MiB idle, {:.1} MiB with {clients} proxies = {:.1} KiB per proxy",
        idle_rss as f64 / 1024.0,
        connected_rss as f64 / 1024.0,
        per_proxy
    );
}
