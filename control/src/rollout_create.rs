//! `sluice rollout create NAME --service HOST --stable-labels version=v1 --canary-labels
//! version=v2 --steps 10:5m,50:0,100`: the consoles' release form. It writes the resources an
//! Argo user would write by hand — a DestinationRule with `stable` and `canary` subsets, a
//! VirtualService with a weighted `primary` route, and a Rollout whose steps are the form's —
//! first with the stable labels (revision 1, stable at once), then with the canary labels, which
//! starts the release.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// The form.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CreateRequest {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub service: String,
    pub stable_labels: BTreeMap<String, String>,
    pub canary_labels: BTreeMap<String, String>,
    /// `WEIGHT[:WAIT],…`: a wait of 0 pauses until promoted; `30s`, `5m`, `1h` or seconds.
    pub steps: String,
    /// Also bind the VirtualService to this Gateway (`namespace/name`), besides the mesh.
    #[serde(default)]
    pub gateway: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// Why the form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("name `{0}`: must be a lowercase DNS label of at most 63 characters ([a-z0-9-], starting and ending with a letter or digit)")]
    Name(String),
    #[error("steps: `{0}`: expected WEIGHT[:WAIT] with WEIGHT 0..100 and WAIT 0 (until promoted), 30s, 5m, 1h or seconds")]
    Step(String),
    #[error("{0} labels are required")]
    Labels(&'static str),
    #[error("stable and canary labels are the same: the release would not move traffic")]
    SameLabels,
    #[error("service is required")]
    Service,
}

/// A Kubernetes name: a lowercase RFC 1123 label of at most 63 characters.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Parse `10:5m,50:0,100` into Rollout steps.
pub fn steps(text: &str) -> Result<Vec<Value>, CreateError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let err = || CreateError::Step(part.to_string());
        let (w, wait) = match part.split_once(':') {
            Some((w, wait)) => (w, Some(wait)),
            None => (part, None),
        };
        let w: u32 = w.trim().parse().map_err(|_| err())?;
        if w > 100 {
            return Err(err());
        }
        out.push(json!({"setWeight": w}));
        match wait.map(str::trim) {
            None => {}
            Some("0") => out.push(json!({"pause": {}})),
            Some(d) => {
                let ok =
                    d.parse::<u64>().is_ok() || sluice_config::istio::parse_duration(d).is_some();
                if !ok {
                    return Err(err());
                }
                out.push(json!({"pause": {"duration": d}}));
            }
        }
    }
    if out.is_empty() {
        return Err(CreateError::Step(text.to_string()));
    }
    Ok(out)
}

/// The documents: `(DestinationRule, VirtualService, Rollout on the stable labels, Rollout on
/// the canary labels)`.
pub fn documents(r: &CreateRequest) -> Result<[Value; 4], CreateError> {
    if !valid_name(&r.name) {
        return Err(CreateError::Name(r.name.clone()));
    }
    if r.service.is_empty() {
        return Err(CreateError::Service);
    }
    if r.stable_labels.is_empty() {
        return Err(CreateError::Labels("stable"));
    }
    if r.canary_labels.is_empty() {
        return Err(CreateError::Labels("canary"));
    }
    if r.stable_labels == r.canary_labels {
        return Err(CreateError::SameLabels);
    }
    let steps = steps(&r.steps)?;
    let meta = json!({"name": r.name, "namespace": r.namespace});
    let dr = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta,
        "spec": {"host": r.service, "subsets": [
            {"name": "stable", "labels": r.stable_labels},
            {"name": "canary", "labels": r.stable_labels},
        ]},
    });
    let mut gateways = vec![json!("mesh")];
    if let Some(g) = &r.gateway {
        gateways.push(json!(g));
    }
    let mut hosts = vec![json!(r.service)];
    if r.gateway.is_some() {
        hosts.push(json!("*"));
    }
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
        "spec": {"hosts": hosts, "gateways": gateways, "http": [{"name": "primary", "route": [
            {"destination": {"host": r.service, "subset": "stable"}, "weight": 100},
            {"destination": {"host": r.service, "subset": "canary"}, "weight": 0},
        ]}]},
    });
    let rollout = |labels: &BTreeMap<String, String>| {
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": meta,
            "spec": {
                "template": {"metadata": {"labels": labels}},
                "strategy": {"canary": {
                    "trafficRouting": {"istio": {
                        "virtualService": {"name": r.name, "routes": ["primary"]},
                        "destinationRule": {"name": r.name, "canarySubsetName": "canary", "stableSubsetName": "stable"},
                    }},
                    "steps": steps,
                }},
            },
        })
    };
    Ok([dr, vs, rollout(&r.stable_labels), rollout(&r.canary_labels)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_from_the_form() {
        assert_eq!(
            steps("10:5m,50:0,100").unwrap(),
            vec![
                json!({"setWeight": 10}),
                json!({"pause": {"duration": "5m"}}),
                json!({"setWeight": 50}),
                json!({"pause": {}}),
                json!({"setWeight": 100}),
            ]
        );
        assert!(steps("10:soon").is_err());
        assert!(steps("120").is_err());
        assert!(steps("").is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("checkout-v2"));
        assert!(!valid_name("Checkout"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn documents_validate_as_the_control_plane_reads_them() {
        let req = CreateRequest {
            name: "web".into(),
            namespace: "default".into(),
            service: "web".into(),
            stable_labels: [("version".to_string(), "v1".to_string())].into(),
            canary_labels: [("version".to_string(), "v2".to_string())].into(),
            steps: "20:0,50:10s,100".into(),
            gateway: Some("istio-system/public".into()),
        };
        let docs = documents(&req).unwrap();
        let text: String = docs.iter().map(|d| format!("{d}\n---\n")).collect();
        let parsed =
            sluice_config::istio::parse_text("create", &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.len(), 4);
        let same = CreateRequest {
            canary_labels: req.stable_labels.clone(),
            ..req
        };
        assert_eq!(documents(&same).unwrap_err(), CreateError::SameLabels);
    }
}
