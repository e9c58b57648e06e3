//! What a sidecar sees, through real Envoy 1.40 and `sluice proxy` sidecars of one control
//! plane: the namespace's `Sidecar` limits what a workload's outbound listener routes (its
//! namespace and one host of another), a workload-selected Sidecar overrides it, and a
//! VirtualService of a namespace the Sidecar does not import is not applied; and each namespace
//! uses the DestinationRules exported to it (`exportTo`).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// A ServiceEntry `NAME.NAMESPACE.svc.cluster.local` with one endpoint at 127.0.0.1:`port`.
fn service(name: &str, namespace: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{name}.{namespace}.svc.cluster.local]\n  ports: [{{number: 80, name: http}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\n"
    )
}

fn mesh(shop: u16, ledger: u16, audit: u16, canary: u16) -> String {
    service("web", "shop", shop)
        + &service("ledger", "billing", ledger)
        + &service("audit", "billing", audit)
        + &service("web-canary", "shop", canary)
        + r#"# A VirtualService of another namespace sending web to the canary: shop's sidecars do not import
# it, so web keeps its default route there.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-to-canary, namespace: elsewhere}
spec:
  hosts: [web.shop.svc.cluster.local]
  http: [{route: [{destination: {host: web-canary.shop.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ["./*", "billing/ledger.billing.svc.cluster.local"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: auditor, namespace: shop}
spec:
  workloadSelector: {labels: {app: auditor}}
  egress: [{hosts: ["billing/*"]}]
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_sluice_sidecars_see_what_their_sidecar_resource_imports() {
    let web = upstream("web").await;
    let ledger = upstream("ledger").await;
    let audit = upstream("audit").await;
    let canary = upstream("web-canary").await;
    let control = ControlPlane::start(&[(
        "mesh.yaml",
        mesh(web.port(), ledger.port(), audit.port(), canary.port()),
    )]);
    // (proxy kind, app label, outbound port)
    let mut sidecars = Vec::new();
    let mut processes = Vec::new();
    for kind in ["envoy", "sluice"] {
        for app in ["frontend", "auditor"] {
            let outbound = closed_port();
            let labels = json!({"LABELS": {"app": app}});
            processes.push(sidecar_proxy(kind, control.xds, app, "shop", outbound, labels).await);
            sidecars.push((kind, app, outbound));
        }
    }
    control.wait_synced(4, Duration::from_secs(15)).await;
    let client = client_h1();
    // (app, host, upstream that answers, or None for 404)
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("frontend", "web.shop.svc.cluster.local", Some("web")),
        ("frontend", "web", Some("web")),
        (
            "frontend",
            "ledger.billing.svc.cluster.local",
            Some("ledger"),
        ),
        ("frontend", "audit.billing.svc.cluster.local", None),
        ("auditor", "audit.billing.svc.cluster.local", Some("audit")),
        ("auditor", "ledger.billing", Some("ledger")),
        ("auditor", "web.shop.svc.cluster.local", None),
    ];
    for (kind, app, port) in &sidecars {
        for (case_app, host, want) in cases {
            if case_app != app {
                continue;
            }
            let r = request(
                &client,
                "GET",
                &format!("http://127.0.0.1:{port}/"),
                host,
                &[],
            )
            .await;
            match want {
                Some(name) => {
                    assert_eq!(r.status, 200, "{kind} {app} → {host}");
                    assert_eq!(
                        r.headers.get("x-upstream").and_then(|v| v.to_str().ok()),
                        Some(*name),
                        "{kind} {app} → {host}"
                    );
                }
                None => assert_eq!(r.status, 404, "{kind} {app} → {host}: not imported"),
            }
        }
    }
}

/// DestinationRule `exportTo`: two namespaces keep their own DestinationRule for one service, each
/// visible only at home (`.`), and each namespace's VirtualService routes to subset `stable`. A
/// sidecar of `shop` reaches v1 and one of `ops` v2, through Envoy and Sluice alike; a namespace
/// with neither rule has no subset `stable` (a 503 with no cluster, as in Istio).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_uses_the_destination_rules_exported_to_it() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let mesh = render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: {{v1}}}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: {{v2}}}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  exportTo: ["."]
  subsets: [{name: stable, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: ops}
spec:
  host: web.shop.svc.cluster.local
  exportTo: ["."]
  subsets: [{name: stable, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-stable}
spec:
  hosts: [web.shop.svc.cluster.local]
  http: [{route: [{destination: {host: web.shop.svc.cluster.local, subset: stable}}]}]
"#,
        &[("v1", v1.port().to_string()), ("v2", v2.port().to_string())],
    );
    let control = ControlPlane::start(&[("mesh.yaml", mesh)]);
    let mut sidecars = Vec::new();
    let mut processes = Vec::new();
    for kind in ["envoy", "sluice"] {
        for ns in ["shop", "ops", "blog"] {
            let outbound = closed_port();
            processes.push(sidecar_proxy(kind, control.xds, "app", ns, outbound, json!({})).await);
            sidecars.push((kind, ns, outbound));
        }
    }
    control.wait_synced(6, Duration::from_secs(15)).await;
    let client = client_h1();
    for (kind, ns, port) in &sidecars {
        let r = request(
            &client,
            "GET",
            &format!("http://127.0.0.1:{port}/"),
            "web.shop.svc.cluster.local",
            &[],
        )
        .await;
        let upstream = r.headers.get("x-upstream").and_then(|v| v.to_str().ok());
        match *ns {
            "shop" => assert_eq!((r.status, upstream), (200, Some("v1")), "{kind} {ns}"),
            "ops" => assert_eq!((r.status, upstream), (200, Some("v2")), "{kind} {ns}"),
            _ => assert_eq!(r.status, 503, "{kind} {ns}: no subset stable here"),
        }
    }
}
