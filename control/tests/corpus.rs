//! Every file of `../shared/corpus/istio/`, `argo/` and `flagger/` is accepted or refused with an
//! error naming the field, as pinned here; a new corpus file without a pinned outcome fails.
//! Accepted files are also translated for a gateway and a sidecar, and every resource produced
//! must encode as a valid Envoy message.

use std::path::Path;

use sluice_config::istio::{parse_text, Parsed};
use sluice_control::node_role::Role;
use sluice_control::translate::MeshConfig;
use sluice_control::xds_encode::to_any;

/// `Ok(kinds)`: the documents' kinds (`-Kind` for kinds Sluice does not read); `Err(text)`:
/// refused with an error containing `text`.
const EXPECTED: &[(&str, Result<&str, &str>)] = &[
    ("istio/bookinfo-gateway.yaml", Ok("Gateway VirtualService")),
    ("istio/destination-rule-all-mtls.yaml", Err("destination-rule-all-mtls.yaml:9: spec.trafficPolicy.tls.mode: not supported: ISTIO_MUTUAL")),
    ("istio/destination-rule-all.yaml", Ok("DestinationRule DestinationRule DestinationRule DestinationRule")),
    ("istio/destination-rule-reviews.yaml", Ok("DestinationRule")),
    ("istio/egress-rule-google-apis.yaml", Ok("ServiceEntry VirtualService DestinationRule")),
    ("istio/fault-injection-details-v1.yaml", Ok("VirtualService DestinationRule")),
    ("istio/istio.io__tasks__mirroring__index.md.block-mirror-vs.yaml", Ok("VirtualService")),
    ("istio/tcp-echo__tcp-echo-20-v2.yaml", Ok("VirtualService")),
    ("istio/testdata-config__destination-rule-all.yaml", Ok("ServiceEntry DestinationRule")),
    ("istio/testdata-config__rule-default-route-append-headers.yaml", Ok("ServiceEntry VirtualService")),
    ("istio/testdata-config__rule-default-route-cors-policy.yaml", Ok("ServiceEntry VirtualService")),
    ("istio/testdata-config__rule-redirect-injection.yaml", Ok("ServiceEntry VirtualService")),
    ("istio/testdata-config__rule-regex-route.yaml", Ok("ServiceEntry DestinationRule VirtualService")),
    ("istio/testdata-config__static-weighted-se.yaml", Ok("ServiceEntry")),
    ("istio/testdata-config__virtual-service-all.yaml", Ok("VirtualService")),
    ("istio/validation-crds__workloadentry-valid.yaml", Err(":28: spec.address: not supported: Unix domain socket endpoints")),
    ("istio/virtual-service-all-v1.yaml", Ok("VirtualService VirtualService VirtualService VirtualService")),
    ("istio/virtual-service-details-v2.yaml", Ok("VirtualService")),
    ("istio/virtual-service-ratings-db.yaml", Ok("VirtualService VirtualService")),
    ("istio/virtual-service-ratings-mysql-vm.yaml", Ok("VirtualService VirtualService")),
    ("istio/virtual-service-ratings-mysql.yaml", Ok("VirtualService VirtualService")),
    ("istio/virtual-service-ratings-test-abort.yaml", Ok("VirtualService")),
    ("istio/virtual-service-ratings-test-delay.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-50-v3.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-80-20.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-90-10.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-jason-v2-v3.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-test-v2.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-v2-v3.yaml", Ok("VirtualService")),
    ("istio/virtual-service-reviews-v3.yaml", Ok("VirtualService")),
    ("argo/docs__analysis__prometheus.md.block0-success-rate.yaml", Ok("AnalysisTemplate")),
    ("argo/docs__analysis__prometheus.md.block1-range-query.yaml", Ok("AnalysisTemplate")),
    ("argo/docs__features__traffic-management__index.md.block2-setHeaderRoute.yaml", Err("setHeaderRoute.yaml: metadata.name: required")),
    ("argo/docs__features__traffic-management__index.md.block3-setMirrorRoute.yaml", Err("setMirrorRoute.yaml: metadata.name: required")),
    ("argo/docs__features__traffic-management__istio.md.block1-host-split-vsvc.yaml", Ok("VirtualService")),
    ("argo/docs__features__traffic-management__istio.md.block11-tcp-vsvc.yaml", Ok("VirtualService")),
    ("argo/docs__features__traffic-management__istio.md.block5-subset-split-vsvc.yaml", Ok("VirtualService")),
    ("argo/docs__features__traffic-management__istio.md.block6-destrule.yaml", Ok("DestinationRule")),
    ("argo/examples__analysis-templates.yaml", Err(":17: spec.metrics[0].provider.job: not supported")),
    ("argo/examples__cluster-analysis-templates.yaml", Err(":12: spec.metrics[0].provider.job: not supported")),
    ("argo/examples__experiment-with-analysis.yaml", Ok("-Experiment")),
    ("argo/examples__istio__istio-mirror.yaml", Ok("-Service -Service VirtualService Rollout Gateway")),
    ("argo/examples__istio__istio-subset-split.yaml", Ok("-Service VirtualService DestinationRule Rollout")),
    ("argo/examples__rollout-analysis-step.yaml", Ok("Rollout")),
    ("argo/examples__rollout-background-analysis.yaml", Ok("Rollout")),
    ("argo/examples__rollout-bluegreen.yaml", Ok("Rollout -Service -Service")),
    ("argo/examples__rollout-canary.yaml", Ok("Rollout")),
    ("argo/examples__rollout-experiment-step.yaml", Err(":36: spec.strategy.canary.steps[1].experiment: not supported")),
    ("argo/examples__traffic-routing-experiment-step__istio-host-split-experiment-step.yaml", Err(":64: spec.strategy.canary.steps[1].experiment: not supported")),
    ("argo/test__e2e__header-routing__istio-hr-host.yaml", Ok("-Service -Service VirtualService Rollout Gateway")),
    ("argo/test__e2e__istio__istio-host-http-tls-split.yaml", Ok("-Service -Service VirtualService Rollout")),
    ("argo/test__e2e__istio__istio-host-split.yaml", Ok("-Service -Service VirtualService Rollout")),
    ("argo/test__e2e__istio__istio-subset-split-single-route.yaml", Ok("-Service VirtualService DestinationRule Rollout")),
    ("flagger/artifacts__examples__istio-abtest.yaml", Ok("-Canary")),
    ("flagger/artifacts__examples__istio-canary.yaml", Ok("-Canary")),
    ("flagger/docs__gitbook__tutorials__istio-ab-testing.md.block1-canary-ab.yaml", Ok("-Canary")),
    ("flagger/docs__gitbook__tutorials__istio-progressive-delivery.md.block2-canary-retries-affinity.yaml", Ok("-Canary")),
    ("flagger/docs__gitbook__tutorials__istio-progressive-delivery.md.block3-canary-mirror.yaml", Ok("-Canary")),
];

#[test]
fn every_istio_and_argo_corpus_file_has_its_pinned_outcome() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    let mut files = Vec::new();
    for sub in ["istio", "argo", "flagger"] {
        for e in std::fs::read_dir(root.join(sub))
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                files.push(format!("{sub}/{name}"));
            }
        }
    }
    files.sort();
    let pool = sluice_proto::descriptor_pool().unwrap();
    let mut failures = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for file in &files {
        let Some((_, expected)) = EXPECTED.iter().find(|(f, _)| f == file) else {
            failures.push(format!("{file}: no pinned outcome"));
            continue;
        };
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let got = parse_text(file, &text);
        match (expected, got) {
            (Ok(kinds), Ok(docs)) => {
                let got_kinds: Vec<String> = docs
                    .iter()
                    .map(|d| match d {
                        Parsed::Istio(r) => r.spec.kind().to_string(),
                        Parsed::Rollout(_) => "Rollout".to_string(),
                        Parsed::AnalysisTemplate(_) => "AnalysisTemplate".to_string(),
                        Parsed::Other { kind, .. } => format!("-{kind}"),
                    })
                    .collect();
                if got_kinds.join(" ") != *kinds {
                    failures.push(format!("{file}: kinds {got_kinds:?}, expected {kinds}"));
                    continue;
                }
                let resources = docs
                    .into_iter()
                    .filter_map(|d| match d {
                        Parsed::Istio(r) => Some(*r),
                        Parsed::Other { .. } | Parsed::Rollout(_) | Parsed::AnalysisTemplate(_) => {
                            None
                        }
                    })
                    .collect();
                let mesh = MeshConfig::new(resources);
                let roles = [
                    Role::Sidecar {
                        outbound: "127.0.0.1:15001".parse().unwrap(),
                        inbound: None,
                        labels: Default::default(),
                        namespace: "default".into(),
                    },
                    Role::Gateway {
                        labels: Default::default(),
                        bind_ip: "0.0.0.0".into(),
                        namespace: "istio-system".into(),
                    },
                ];
                for role in roles {
                    let r = mesh.for_proxy(&role);
                    for (ty, map) in r.by_type() {
                        for (name, v) in map {
                            if let Err(e) = to_any(&pool, ty, name, v) {
                                failures.push(format!("{file}: {e}"));
                            }
                        }
                    }
                }
                accepted += 1;
            }
            (Err(needle), Err(e)) if e.to_string().contains(needle) => refused += 1,
            (expected, got) => failures.push(format!(
                "{file}: expected {expected:?}, got {:?}",
                got.map(|d| d.len()).map_err(|e| e.to_string())
            )),
        }
    }
    eprintln!("istio/argo/flagger corpus: {} files, {accepted} accepted, {refused} refused naming the field", files.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        files.len(),
        EXPECTED.len(),
        "pinned outcomes for files that no longer exist"
    );
}
