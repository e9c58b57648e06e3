//! Istio `AuthorizationPolicy` on a gateway: one `sluice control` translating DENY, ALLOW and
//! dry-run policies, served at once to real Envoy 1.40 (gateway on 127.0.0.2) and to
//! `sluice proxy` (127.0.0.1). Every request must get the same answer from both: through, or
//! Envoy's 403 `RBAC: access denied`; the dry-run policy is counted, never enforced.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// (method, host, path, headers, status).
type GatewayCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);
/// (method, path, headers, status).
type SidecarCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

fn config(web: u16, gw: u16) -> String {
    service_behind_gateway("web", web, gw)
        + r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: web}}]}]
---
# Administrators only under /admin.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin-only, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
    when: [{key: "request.headers[x-role]", notValues: [admin]}]
---
# Reads of the shop's hosts, and posts to its API from loopback.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {methods: [GET, HEAD], hosts: [shop.example.com, "*.shop.example.com"]}}]
  - from: [{source: {ipBlocks: [127.0.0.0/8], notIpBlocks: [127.0.0.99]}}]
    to: [{operation: {methods: [POST], paths: ["/api/*"], notPaths: ["/api/internal*"]}}]
---
# Being tried out: would deny /beta.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-beta, namespace: istio-system, annotations: {istio.io/dry-run: "true"}}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/beta*"]}}]}]
---
# Another workload's policy: applies to neither gateway.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  rules: []
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_sluice_enforce_the_same_authorization_policies() {
    let web = upstream("web").await;
    let gw = closed_port();
    let control = ControlPlane::start(&[("mesh.yaml", config(web.port(), gw))]);
    let (envoy, sluice) = envoy_and_sluice_gateways(&control).await;

    let cases: &[GatewayCase] = &[
        ("GET", "shop.example.com", "/", &[], 200),
        ("GET", "SHOP.Example.com", "/", &[], 200),
        ("HEAD", "api.shop.example.com", "/", &[], 200),
        ("GET", "other.example.com", "/", &[], 403),
        ("DELETE", "shop.example.com", "/", &[], 403),
        ("GET", "shop.example.com", "/admin/users", &[], 403),
        (
            "GET",
            "shop.example.com",
            "/admin/users",
            &[("x-role", "guest")],
            403,
        ),
        (
            "GET",
            "shop.example.com",
            "/admin/users",
            &[("x-role", "admin")],
            200,
        ),
        ("POST", "other.example.com", "/api/cart", &[], 200),
        ("POST", "shop.example.com", "/api/internal/reset", &[], 403),
        ("POST", "shop.example.com", "/cart", &[], 403),
        ("GET", "shop.example.com", "/beta/page", &[], 200),
    ];
    let client = client_h1();
    for (kind, ip) in [("envoy", "127.0.0.2"), ("sluice", "127.0.0.1")] {
        for (method, host, path, headers, status) in cases {
            let r = request(
                &client,
                method,
                &format!("http://{ip}:{gw}{path}"),
                host,
                headers,
            )
            .await;
            assert_eq!(
                r.status, *status,
                "{kind} {method} {host}{path} {headers:?}"
            );
            if r.status == 403 {
                assert_eq!(&r.body[..], b"RBAC: access denied", "{kind} {path}");
            }
        }
    }
    // The dry-run policy denied /beta in the shadow only, and both proxies count every RBAC
    // decision alike. Envoy's text statistics: `http.PREFIX.rbac.[SHADOW_PREFIX.]NAME: N`;
    // Sluice's Prometheus series carry the same as tags.
    let mut envoy_counts: Vec<String> = envoy
        .admin("/stats")
        .await
        .lines()
        .filter_map(|l| l.split_once(".rbac.").map(|(_, rest)| rest.to_string()))
        .collect();
    envoy_counts.sort();
    assert!(
        envoy_counts.contains(&"istio_dry_run_deny_.shadow_denied: 1".to_string()),
        "{envoy_counts:?}"
    );
    let mut sluice_counts: Vec<String> = sluice
        .stats("envoy_http_rbac_")
        .await
        .iter()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.strip_prefix("envoy_http_rbac_")?.split('{').next()?;
            let prefix = series
                .split("envoy_rbac_http_prefix=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("");
            Some(if prefix.is_empty() {
                format!("{name}: {value}")
            } else {
                format!("{prefix}.{name}: {value}")
            })
        })
        .collect();
    sluice_counts.sort();
    assert_eq!(sluice_counts, envoy_counts, "RBAC statistics");
}

/// A workload's own policies, enforced by its sidecar's inbound listener: namespace `shop`,
/// labels `app: web`, a policy of its namespace selecting it, one of the root namespace for
/// everyone, and one of another namespace that must not apply. Envoy and Sluice sidecars give the
/// same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_enforces_its_workloads_policies_on_inbound_traffic() {
    let app = upstream("web").await;
    let mesh = render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: {{app}}}, labels: {app: web}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: ["/public*"]}}]
  - from: [{source: {ipBlocks: [127.0.0.1]}}]
    when: [{key: "request.headers[x-token]", values: [s3cret]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-forbidden, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/forbidden]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everything, namespace: other}
spec:
  action: DENY
  rules: [{}]
"#,
        &[("app", app.port().to_string())],
    );
    let control = ControlPlane::start(&[("mesh.yaml", mesh)]);
    let mut inbound_ports = Vec::new();
    let mut proxies = Vec::new();
    for kind in ["envoy", "sluice"] {
        let (outbound, inbound) = (closed_port(), closed_port());
        let extra = json!({
            "SLUICE_INBOUND_ADDRESS": format!("127.0.0.1:{inbound}"),
            "SLUICE_APP_ADDRESS": app.addr.to_string(),
            "LABELS": {"app": "web"},
        });
        proxies.push(sidecar_proxy(kind, control.xds, "web", "shop", outbound, extra).await);
        inbound_ports.push((kind, inbound));
    }
    control.wait_synced(2, Duration::from_secs(15)).await;
    let client = client_h1();
    let cases: &[SidecarCase] = &[
        ("GET", "/public/index.html", &[], 200),
        ("POST", "/public/form", &[], 403),
        ("GET", "/private", &[], 403),
        ("GET", "/private", &[("x-token", "wrong")], 403),
        ("DELETE", "/private", &[("x-token", "s3cret")], 200),
        ("GET", "/forbidden", &[("x-token", "s3cret")], 403),
    ];
    for (kind, port) in &inbound_ports {
        for (method, path, headers, status) in cases {
            let r = request(
                &client,
                method,
                &format!("http://127.0.0.1:{port}{path}"),
                "web.shop.svc.cluster.local",
                headers,
            )
            .await;
            assert_eq!(r.status, *status, "{kind} {method} {path} {headers:?}");
        }
    }
}

/// AuthorizationPolicies on a gateway's TCP servers, as network RBAC filters before the relay:
/// an ALLOW rule on one port lets its connections through, an ALLOW rule naming an HTTP-only
/// field (`methods`) is left out for TCP, so the other port is refused. Envoy decides at the
/// client's first bytes, after the upstream connection is made (the server's greeting gets
/// through); Sluice the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_servers_are_checked_by_network_rbac_as_envoy_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (echo, _task) = tcp_greeter("hi").await;
    let (open, closed) = (closed_port(), closed_port());
    let mesh = render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tcp: {{echo}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: {{open}}, name: tcp-open, protocol: TCP}, hosts: ["*"]}
  - {port: {number: {{closed}}, name: tcp-closed, protocol: TCP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp: [{route: [{destination: {host: echo, port: {number: 9000}}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {ports: ["{{open}}"]}}]
  - to: [{operation: {ports: ["{{closed}}"], methods: [GET]}}]
"#,
        &[
            ("echo", echo.to_string()),
            ("open", open.to_string()),
            ("closed", closed.to_string()),
        ],
    );
    let control = ControlPlane::start(&[("mesh.yaml", mesh)]);
    // TCP servers only: clusters, endpoints and listeners, no route configuration.
    let (envoy, sluice) = envoy_and_sluice_gateways_of(&control, 3).await;
    let mut seen = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.1"] {
        for port in [open, closed] {
            let mut s = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
            // Wait for the greeting before speaking, so that what crosses is deterministic.
            let mut greeting = [0u8; 3];
            let got = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut greeting))
                .await
                .is_ok_and(|r| r.is_ok());
            let _ = s.write_all(b"ping").await;
            let _ = s.shutdown().await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
            let text = format!(
                "{}{}",
                if got {
                    String::from_utf8_lossy(&greeting).into_owned()
                } else {
                    String::new()
                },
                String::from_utf8_lossy(&rest)
            );
            seen.push((ip, port == open, text));
        }
    }
    for (ip, is_open, text) in &seen {
        let want = if *is_open { "hi\npingbye" } else { "hi\n" };
        assert_eq!(
            text,
            want,
            "{ip} {}",
            if *is_open {
                "allowed port"
            } else {
                "refused port"
            }
        );
    }
    // The network RBAC statistics, as Prometheus series: one connection allowed, one denied.
    let series = |text: String| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("rbac"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let envoy_rbac = series(envoy.admin("/stats/prometheus").await);
    assert!(
        envoy_rbac.contains(
            &"envoy_denied{envoy_rbac_prefix=\"tcp\",envoy_tcp_prefix=\"rbac\"} 1".to_string()
        ),
        "{envoy_rbac:#?}"
    );
    assert_eq!(series(sluice.admin("/stats/prometheus").await), envoy_rbac);
}
