//! Argo Rollouts `Rollout` resources (`argoproj.io/v1alpha1`): the release tasks Sluice runs.
//!
//! As for Istio resources, each struct denies unknown fields, so a field Sluice does not model is
//! refused with its path and line, and fields Argo has but Sluice cannot honour yet (analysis,
//! experiments, other traffic routers) are refused with a reason by [`check`]. Fields that only
//! size Kubernetes ReplicaSets (`replicas`, `maxSurge`, …) are accepted and shown: without
//! Kubernetes there are no pods to scale, and they never move traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FieldError;
use crate::istio::{parse_duration, Metadata};

/// The API group and version of Rollouts.
pub const API_VERSION: &str = "argoproj.io/v1alpha1";

/// A Rollout: `metadata` and `spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: Option<u32>,
    pub selector: Option<Value>,
    #[serde(default)]
    pub template: PodTemplate,
    pub workload_ref: Option<Value>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub paused: bool,
    pub revision_history_limit: Option<u32>,
    pub min_ready_seconds: Option<u32>,
    pub progress_deadline_seconds: Option<u32>,
    pub progress_deadline_abort: Option<bool>,
    pub restart_at: Option<Value>,
    pub rollback_window: Option<Value>,
    pub analysis: Option<Value>,
}

/// The pod template: its labels identify the revision (`version: v2`); the rest (containers,
/// images) is part of the revision's identity but is not run by Sluice.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    #[serde(default)]
    pub spec: Value,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    pub canary: Option<Canary>,
    pub blue_green: Option<BlueGreen>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    pub canary_service: Option<String>,
    pub stable_service: Option<String>,
    pub traffic_routing: Option<TrafficRouting>,
    #[serde(default)]
    pub steps: Vec<Step>,
    pub analysis: Option<RolloutAnalysis>,
    pub max_surge: Option<Value>,
    pub max_unavailable: Option<Value>,
    pub scale_down_delay_seconds: Option<u32>,
    pub scale_down_delay_revision_limit: Option<u32>,
    pub abort_scale_down_delay_seconds: Option<u32>,
    pub dynamic_stable_scale: Option<bool>,
    pub canary_metadata: Option<Value>,
    pub stable_metadata: Option<Value>,
    pub anti_affinity: Option<Value>,
    pub min_pods_per_replica_set: Option<u32>,
    pub ping_pong: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficRouting {
    pub istio: Option<IstioRouting>,
    #[serde(default)]
    pub managed_routes: Vec<ManagedRoute>,
    pub nginx: Option<Value>,
    pub alb: Option<Value>,
    pub smi: Option<Value>,
    pub ambassador: Option<Value>,
    pub apisix: Option<Value>,
    pub traefik: Option<Value>,
    pub appmesh: Option<Value>,
    pub plugins: Option<Value>,
    pub max_traffic_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagedRoute {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioRouting {
    pub virtual_service: Option<VirtualServiceRef>,
    #[serde(default)]
    pub virtual_services: Vec<VirtualServiceRef>,
    pub destination_rule: Option<DestinationRuleRef>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceRef {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<String>,
    /// TLS routes of the VirtualService whose weights the release sets, by port and SNI hosts.
    #[serde(default)]
    pub tls_routes: Vec<TlsRouteRef>,
    /// TCP routes of the VirtualService whose weights the release sets, by port.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRouteRef>,
}

/// A VirtualService `tls` route, named by the port and SNI hosts of one of its matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRouteRef {
    pub port: Option<u32>,
    #[serde(default)]
    pub sni_hosts: Vec<String>,
}

/// A VirtualService `tcp` route, named by the port of one of its matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteRef {
    pub port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleRef {
    pub name: String,
    pub canary_subset_name: String,
    pub stable_subset_name: String,
}

/// One canary step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    pub set_weight: Option<u32>,
    pub pause: Option<Pause>,
    pub set_header_route: Option<SetHeaderRoute>,
    pub set_mirror_route: Option<SetMirrorRoute>,
    pub set_canary_scale: Option<Value>,
    pub analysis: Option<RolloutAnalysis>,
    pub experiment: Option<Value>,
    pub plugin: Option<Value>,
}

/// A reference to analysis templates with arguments: a step's `analysis`, the canary's
/// background `analysis`, or blue-green `prePromotionAnalysis` / `postPromotionAnalysis`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutAnalysis {
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    #[serde(default)]
    pub args: Vec<AnalysisArg>,
    /// Background analysis: the step from which it runs (0-based).
    pub starting_step: Option<u32>,
    /// As the templates' `dryRun`, added to theirs.
    #[serde(default)]
    pub dry_run: Vec<crate::argo_analysis::DryRun>,
    /// As the templates' `measurementRetention`, added to theirs.
    #[serde(default)]
    pub measurement_retention: Vec<crate::argo_analysis::MeasurementRetention>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateRef {
    pub template_name: String,
    #[serde(default)]
    pub cluster_scope: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisArg {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<Value>,
}

/// `pause: {}` waits for a promotion; `pause: {duration: 30s}` (or seconds) for a timer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pause {
    pub duration: Option<Value>,
}

impl Pause {
    /// The pause's length; `None` = until promoted. Errors name the value.
    pub fn duration(&self) -> Result<Option<std::time::Duration>, String> {
        match &self.duration {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|s| Some(std::time::Duration::from_secs(s)))
                .ok_or_else(|| format!("`{n}` is not a whole number of seconds")),
            Some(Value::String(s)) => {
                if let Ok(n) = s.parse::<u64>() {
                    return Ok(Some(std::time::Duration::from_secs(n)));
                }
                parse_duration(s)
                    .map(Some)
                    .ok_or_else(|| format!("`{s}` is not a duration (30s, 10m, 1h or seconds)"))
            }
            Some(other) => Err(format!("`{other}` is not a duration")),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetHeaderRoute {
    pub name: String,
    /// Empty: remove the route.
    #[serde(default, rename = "match")]
    pub matches: Vec<HeaderRoutingMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderRoutingMatch {
    pub header_name: String,
    pub header_value: StringMatchValue,
}

/// Argo's `StringMatch`: exact, prefix or regex.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatchValue {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetMirrorRoute {
    pub name: String,
    pub percentage: Option<u32>,
    /// Empty (with no percentage): remove the route.
    #[serde(default, rename = "match")]
    pub matches: Vec<MirrorMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorMatch {
    pub method: Option<StringMatchValue>,
    pub path: Option<StringMatchValue>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchValue>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlueGreen {
    pub active_service: String,
    pub preview_service: Option<String>,
    pub auto_promotion_enabled: Option<bool>,
    pub auto_promotion_seconds: Option<u32>,
    pub scale_down_delay_seconds: Option<u32>,
    pub scale_down_delay_revision_limit: Option<u32>,
    pub abort_scale_down_delay_seconds: Option<u32>,
    pub preview_replica_count: Option<u32>,
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    pub anti_affinity: Option<Value>,
    pub active_metadata: Option<Value>,
    pub preview_metadata: Option<Value>,
}

fn refuse(errors: &mut Vec<FieldError>, path: String, why: &str) {
    errors.push(FieldError::new(path, format!("not supported: {why}")));
}

fn check_string_match(m: &StringMatchValue, at: &str, errors: &mut Vec<FieldError>) {
    let n = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if n != 1 {
        errors.push(FieldError::new(
            at,
            "exactly one of exact, prefix, regex is required",
        ));
    }
    if let Some(re) = &m.regex {
        if let Err(e) = regex::Regex::new(re) {
            errors.push(FieldError::new(
                format!("{at}.regex"),
                format!("invalid regex: {e}"),
            ));
        }
    }
}

fn check_analysis(a: &RolloutAnalysis, at: &str, errors: &mut Vec<FieldError>) {
    if a.templates.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.templates"),
            "at least one template is required",
        ));
    }
    crate::argo_analysis::check_metric_selectors(&a.dry_run, &a.measurement_retention, at, errors);
    for (i, arg) in a.args.iter().enumerate() {
        if arg.value_from.is_some() {
            refuse(
                errors,
                format!("{at}.args[{i}].valueFrom"),
                "values from pod template hashes or Kubernetes fields; give `value`",
            );
        }
    }
}

/// Refuse what Sluice cannot run, and invalid values. Paths are the user's (`spec.strategy…`).
pub fn check(spec: &RolloutSpec, errors: &mut Vec<FieldError>) {
    if spec.workload_ref.is_some() {
        refuse(
            errors,
            "spec.workloadRef".into(),
            "referencing a Deployment; put the template in the Rollout",
        );
    }
    // `spec.analysis` only limits how many finished runs are kept: no effect on traffic.
    if spec.template.metadata.labels.is_empty() {
        errors.push(FieldError::new(
            "spec.template.metadata.labels",
            "required: the template's labels select the revision's endpoints (e.g. version: v2)",
        ));
    }
    match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(_), Some(_)) => errors.push(FieldError::new(
            "spec.strategy",
            "only one of canary, blueGreen may be set",
        )),
        (None, None) => errors.push(FieldError::new(
            "spec.strategy",
            "one of canary, blueGreen is required",
        )),
        _ => {}
    }
    if let Some(c) = &spec.strategy.canary {
        check_canary(c, errors);
    }
    if let Some(bg) = &spec.strategy.blue_green {
        if bg.active_service.is_empty() {
            errors.push(FieldError::new(
                "spec.strategy.blueGreen.activeService",
                "required",
            ));
        }
        if let Some(a) = &bg.pre_promotion_analysis {
            check_analysis(a, "spec.strategy.blueGreen.prePromotionAnalysis", errors);
        }
        if let Some(a) = &bg.post_promotion_analysis {
            check_analysis(a, "spec.strategy.blueGreen.postPromotionAnalysis", errors);
        }
    }
}

fn check_canary(c: &Canary, errors: &mut Vec<FieldError>) {
    let at = "spec.strategy.canary";
    if let Some(a) = &c.analysis {
        check_analysis(a, &format!("{at}.analysis"), errors);
    }
    if c.ping_pong.is_some() {
        refuse(errors, format!("{at}.pingPong"), "ping-pong services");
    }
    let tr = c.traffic_routing.as_ref();
    let istio = tr.and_then(|t| t.istio.as_ref());
    if let Some(t) = tr {
        for (name, v) in [
            ("nginx", &t.nginx),
            ("alb", &t.alb),
            ("smi", &t.smi),
            ("ambassador", &t.ambassador),
            ("apisix", &t.apisix),
            ("traefik", &t.traefik),
            ("appmesh", &t.appmesh),
            ("plugins", &t.plugins),
        ] {
            if v.is_some() {
                refuse(
                    errors,
                    format!("{at}.trafficRouting.{name}"),
                    "Sluice routes with Istio resources (trafficRouting.istio)",
                );
            }
        }
        if t.max_traffic_weight.is_some_and(|w| w != 100) {
            refuse(
                errors,
                format!("{at}.trafficRouting.maxTrafficWeight"),
                "weights other than percentages",
            );
        }
        if t.istio.is_none() {
            errors.push(FieldError::new(
                format!("{at}.trafficRouting.istio"),
                "required",
            ));
        }
    }
    if let Some(i) = istio {
        let vss: Vec<&VirtualServiceRef> = i
            .virtual_service
            .iter()
            .chain(&i.virtual_services)
            .collect();
        if vss.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.trafficRouting.istio.virtualService"),
                "required",
            ));
        }
        if i.virtual_service.is_some() && !i.virtual_services.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.trafficRouting.istio"),
                "only one of virtualService, virtualServices may be set",
            ));
        }
        for (k, vs) in vss.iter().enumerate() {
            let vat = if i.virtual_service.is_some() {
                format!("{at}.trafficRouting.istio.virtualService")
            } else {
                format!("{at}.trafficRouting.istio.virtualServices[{k}]")
            };
            for (t, r) in vs.tls_routes.iter().enumerate() {
                if r.sni_hosts.is_empty() {
                    errors.push(FieldError::new(
                        format!("{vat}.tlsRoutes[{t}].sniHosts"),
                        "required",
                    ));
                }
            }
        }
        if i.destination_rule.is_none()
            && (c.canary_service.is_none() || c.stable_service.is_none())
        {
            errors.push(FieldError::new(
                format!("{at}.trafficRouting.istio"),
                "destinationRule (subset split) or canaryService and stableService (host split) is required",
            ));
        }
    }
    let managed: Vec<&str> = tr
        .map(|t| t.managed_routes.iter().map(|m| m.name.as_str()).collect())
        .unwrap_or_default();
    for (i, s) in c.steps.iter().enumerate() {
        let sat = format!("{at}.steps[{i}]");
        let kinds = [
            s.set_weight.is_some(),
            s.pause.is_some(),
            s.set_header_route.is_some(),
            s.set_mirror_route.is_some(),
            s.set_canary_scale.is_some(),
            s.analysis.is_some(),
            s.experiment.is_some(),
            s.plugin.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if kinds != 1 {
            errors.push(FieldError::new(
                sat.clone(),
                "exactly one step kind per step",
            ));
        }
        if let Some(w) = s.set_weight {
            if w > 100 {
                errors.push(FieldError::new(
                    format!("{sat}.setWeight"),
                    format!("{w} is more than 100"),
                ));
            }
        }
        if let Some(p) = &s.pause {
            if let Err(e) = p.duration() {
                errors.push(FieldError::new(format!("{sat}.pause.duration"), e));
            }
        }
        if let Some(a) = &s.analysis {
            check_analysis(a, &format!("{sat}.analysis"), errors);
            if a.starting_step.is_some() {
                errors.push(FieldError::new(
                    format!("{sat}.analysis.startingStep"),
                    "only for background analysis",
                ));
            }
        }
        if s.experiment.is_some() {
            refuse(
                errors,
                format!("{sat}.experiment"),
                "experiments (they create extra ReplicaSets)",
            );
        }
        if s.plugin.is_some() {
            refuse(errors, format!("{sat}.plugin"), "step plugins");
        }
        if let Some(h) = &s.set_header_route {
            if !managed.contains(&h.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{sat}.setHeaderRoute.name"),
                    format!("`{}` is not in trafficRouting.managedRoutes", h.name),
                ));
            }
            for (j, m) in h.matches.iter().enumerate() {
                check_string_match(
                    &m.header_value,
                    &format!("{sat}.setHeaderRoute.match[{j}].headerValue"),
                    errors,
                );
            }
        }
        if let Some(m) = &s.set_mirror_route {
            if !managed.contains(&m.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{sat}.setMirrorRoute.name"),
                    format!("`{}` is not in trafficRouting.managedRoutes", m.name),
                ));
            }
            if m.percentage.is_some_and(|p| p > 100) {
                errors.push(FieldError::new(
                    format!("{sat}.setMirrorRoute.percentage"),
                    "more than 100",
                ));
            }
            for (j, mm) in m.matches.iter().enumerate() {
                let mat = format!("{sat}.setMirrorRoute.match[{j}]");
                if let Some(x) = &mm.method {
                    check_string_match(x, &format!("{mat}.method"), errors);
                }
                if let Some(x) = &mm.path {
                    check_string_match(x, &format!("{mat}.path"), errors);
                }
                for (h, x) in &mm.headers {
                    check_string_match(x, &format!("{mat}.headers.{h}"), errors);
                }
            }
        }
    }
}
