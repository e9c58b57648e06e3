//! Weights set by hand on a VirtualService route that no Rollout manages
//! (`sluice route set-weight VIRTUALSERVICE ROUTE SUBSET=PCT …`): the control-plane API for
//! weight changes. They are stored durably and applied over the file's weights until the next
//! `set-weight`; a Rollout that manages the route wins over them.

use std::collections::BTreeMap;

use sluice_config::istio::{Resource, Spec};

/// Weights by destination (subset name, or host when the destination has no subset).
pub type Weights = BTreeMap<String, u32>;

/// Why a weight change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("VirtualService {0} not found")]
    NoVirtualService(String),
    #[error("VirtualService {vs} has no http route named `{route}` (routes: {names})")]
    NoRoute {
        vs: String,
        route: String,
        names: String,
    },
    #[error("route `{route}` has no destination `{target}` (destinations: {names})")]
    NoDestination {
        route: String,
        target: String,
        names: String,
    },
    #[error("weights add up to {0}, not 100")]
    Sum(u32),
}

fn target(d: &sluice_config::istio::RouteDestination) -> String {
    d.destination
        .subset
        .clone()
        .unwrap_or_else(|| d.destination.host.clone())
}

/// Check that `weights` fit route `route` of VirtualService `ns/vs` in `resources`.
pub fn validate(
    resources: &[Resource],
    ns: &str,
    vs: &str,
    route: &str,
    weights: &Weights,
) -> Result<(), WeightError> {
    let sum: u32 = weights.values().sum();
    if sum != 100 {
        return Err(WeightError::Sum(sum));
    }
    let v = resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::VirtualService(v) if r.metadata.namespace() == ns && r.metadata.name == vs => {
                Some(v)
            }
            _ => None,
        })
        .ok_or_else(|| WeightError::NoVirtualService(format!("{ns}/{vs}")))?;
    let r = v
        .http
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| WeightError::NoRoute {
            vs: format!("{ns}/{vs}"),
            route: route.to_string(),
            names: v
                .http
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let names: Vec<String> = r.route.iter().map(target).collect();
    for t in weights.keys() {
        if !names.contains(t) {
            return Err(WeightError::NoDestination {
                route: route.to_string(),
                target: t.clone(),
                names: names.join(", "),
            });
        }
    }
    Ok(())
}

/// Apply stored weights (`namespace/vs/route` → weights) to the VirtualServices.
pub fn apply(resources: &mut [Resource], stored: &BTreeMap<String, Weights>) {
    for (key, weights) in stored {
        let mut parts = key.splitn(3, '/');
        let (Some(ns), Some(vs), Some(route)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for r in resources.iter_mut() {
            if r.metadata.namespace() != ns || r.metadata.name != vs {
                continue;
            }
            let Spec::VirtualService(v) = &mut r.spec else {
                continue;
            };
            for h in v.http.iter_mut().filter(|h| h.name == route) {
                for d in &mut h.route {
                    if let Some(w) = weights.get(&target(d)) {
                        d.weight = Some(*w);
                    }
                }
            }
        }
    }
}
