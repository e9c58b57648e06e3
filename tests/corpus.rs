//! Every Envoy file in `../shared/corpus/envoy/` either loads or is refused with an error that names
//! the unsupported field. The expected outcome of each file is pinned here; a new corpus file
//! without a pinned outcome fails the test.

use std::path::Path;

/// `Ok(())` = loads; `Err(text)` = refused with an error containing `text`.
const EXPECTED: &[(&str, Result<(), &str>)] = &[
    ("envoy__configs__envoy-demo.yaml", Err("static_resources.listeners[1].filter_chains[0].filters[0].typed_config.local_reply_config: not supported")),
    ("envoy__docs__root__configuration__best_practices___include__edge.yaml", Err("certs/servercert.pem: No such file")),
    ("envoy__docs__traffic_splitting.rst.block1-runtime-fraction.fragment.yaml", Ok(())),
    ("envoy__docs__traffic_splitting.rst.block2-weighted-clusters.fragment.yaml", Ok(())),
    ("examples__cors__backend__envoy.yaml", Ok(())),
    ("examples__dynamic-config-cp__envoy.yaml", Ok(())),
    ("examples__dynamic-config-fs__configs__cds.yaml", Ok(())),
    ("examples__dynamic-config-fs__configs__lds.yaml", Ok(())),
    // LDS and CDS from files (path_config_source).
    ("examples__dynamic-config-fs__envoy.yaml", Ok(())),
    // Loads; its runtime disk layer is not read (a warning says so), so the faults stay at 0 %.
    ("examples__fault-injection__envoy.yaml", Ok(())),
    // Its inline certificate is X.509 v1: served as Envoy serves it.
    ("examples__front-proxy__envoy.yaml", Ok(())),
    // Health checks, priorities and locality weights, as Envoy balances them.
    ("examples__locality-load-balancing__envoy.yaml", Ok(())),
    ("examples__route-mirror__envoy.yaml", Ok(())),
    ("gateway-xds-ir__http-route-multiple-matches.routes.yaml", Ok(())),
    ("gateway-xds-ir__http-route-regex.routes.yaml", Ok(())),
    ("gateway-xds-ir__http-route-weighted-backend-with-filters.routes.yaml", Ok(())),
    ("go-control-plane__sample__bootstrap-ads.yaml", Ok(())),
    // Separate (non-aggregated) xDS streams are not implemented; ADS is.
    ("go-control-plane__sample__bootstrap-xds.yaml", Err(":20: dynamic_resources.lds_config.api_config_source: not supported")),
    ("istio-bootstrap__default_golden.json", Err("bootstrap_extensions[0].typed_config: message 'udpa.type.v1.TypedStruct' not found")),
];

#[test]
fn every_envoy_corpus_file_has_its_pinned_outcome() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/envoy");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let (mut loads, mut refused) = (0, 0);
    for file in &files {
        let Some((_, expected)) = EXPECTED.iter().find(|(f, _)| f == file) else {
            failures.push(format!("{file}: no pinned outcome"));
            continue;
        };
        let got = sluice_proxy::runtime::validate_document(&dir.join(file));
        match (expected, &got) {
            (Ok(()), Ok(_)) => loads += 1,
            (Err(needle), Err(msg)) if msg.contains(needle) => refused += 1,
            _ => failures.push(format!("{file}: expected {expected:?}, got {got:?}")),
        }
    }
    eprintln!(
        "envoy corpus: {} files, {loads} load, {refused} refused with a named field",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        files.len(),
        EXPECTED.len(),
        "pinned outcomes for files that no longer exist"
    );
}
