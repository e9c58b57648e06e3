//! Argo `AnalysisTemplate` and `ClusterAnalysisTemplate` (`argoproj.io/v1alpha1`): the metric
//! checks a release runs. Providers `prometheus` (instant and range queries) and `web` are read; other providers are refused
//! by name. Conditions are parsed when the template is read ([`crate::analysis_expr`]), so a
//! condition Sluice cannot evaluate is refused before any release depends on it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::analysis_expr::{go_duration, Condition};
use crate::error::FieldError;
use crate::istio::{parse_duration, Metadata};

/// A template (namespaced, or cluster-wide when `cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisTemplate {
    pub metadata: Metadata,
    pub spec: AnalysisTemplateSpec,
    pub cluster: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    #[serde(default)]
    pub args: Vec<Argument>,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Metrics (by name, a regular expression) measured and reported but never deciding the run.
    #[serde(default)]
    pub dry_run: Vec<DryRun>,
    /// How many measurements to keep per metric (by name, a regular expression); default 10.
    #[serde(default)]
    pub measurement_retention: Vec<MeasurementRetention>,
}

/// `dryRun[]`: metrics whose name matches `metricName` (a regular expression, `.*` for all).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DryRun {
    pub metric_name: String,
}

/// `measurementRetention[]`: keep the last `limit` measurements of the metrics matching
/// `metricName`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeasurementRetention {
    pub metric_name: String,
    pub limit: u32,
}

/// Whether `name` matches a `metricName` pattern as Argo matches it (a regular expression,
/// searched in the name).
pub fn metric_name_matches(pattern: &str, name: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(name))
}

/// Check `dryRun` and `measurementRetention` entries under `at`.
pub fn check_metric_selectors(
    dry_run: &[DryRun],
    retention: &[MeasurementRetention],
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let patterns = dry_run
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{at}.dryRun[{i}].metricName"), &d.metric_name))
        .chain(retention.iter().enumerate().map(|(i, r)| {
            (
                format!("{at}.measurementRetention[{i}].metricName"),
                &r.metric_name,
            )
        }));
    for (path, pattern) in patterns {
        if let Err(e) = regex::Regex::new(pattern) {
            errors.push(FieldError::new(
                path,
                format!("`{pattern}` is not a regular expression: {e}"),
            ));
        }
    }
    for (i, r) in retention.iter().enumerate() {
        if r.limit == 0 {
            errors.push(FieldError::new(
                format!("{at}.measurementRetention[{i}].limit"),
                "must be at least 1",
            ));
        }
    }
}

/// A template argument (`{{args.NAME}}`), with an optional default `value`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Argument {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metric {
    pub name: String,
    pub interval: Option<String>,
    pub initial_delay: Option<String>,
    /// A number, or a string (possibly `{{args.…}}`).
    pub count: Option<Value>,
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
    pub failure_limit: Option<Value>,
    pub inconclusive_limit: Option<Value>,
    pub consecutive_error_limit: Option<Value>,
    #[serde(default)]
    pub provider: Provider,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Provider {
    pub prometheus: Option<PrometheusProvider>,
    pub web: Option<WebProvider>,
    pub job: Option<Value>,
    pub kayenta: Option<Value>,
    pub datadog: Option<Value>,
    pub new_relic: Option<Value>,
    pub wavefront: Option<Value>,
    pub cloud_watch: Option<Value>,
    pub graphite: Option<Value>,
    pub influxdb: Option<Value>,
    pub skywalking: Option<Value>,
    pub plugin: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusProvider {
    pub address: String,
    pub query: String,
    /// Seconds.
    pub timeout: Option<u64>,
    #[serde(default)]
    pub headers: Vec<Header>,
    pub insecure: Option<bool>,
    pub authentication: Option<Value>,
    pub range_query: Option<RangeQuery>,
}

/// A Prometheus range query (`/api/v1/query_range`): `start` and `end` are expressions giving a
/// time (`now() - duration("5m")`), evaluated at each measurement; `step` is a duration (`1m`).
/// The measurement is every sample of every series returned, one after another.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RangeQuery {
    pub start: String,
    pub end: String,
    pub step: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebProvider {
    pub url: String,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<Header>,
    pub json_path: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub body: Option<String>,
    pub json_body: Option<Value>,
    pub insecure: Option<bool>,
    pub authentication: Option<Value>,
}

fn refuse(errors: &mut Vec<FieldError>, path: String, why: &str) {
    errors.push(FieldError::new(path, format!("not supported: {why}")));
}

/// Whether a field is still an unexpanded `{{args.…}}` reference (checked after expansion).
pub fn has_placeholder(text: &str) -> bool {
    text.contains("{{")
}

/// `text` with every `{{…}}` replaced by `0`.
fn without_placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        match rest[i..].find("}}") {
            Some(j) => {
                out.push('0');
                rest = &rest[i + j + 2..];
            }
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Check what can be checked before arguments are known: providers, durations, conditions.
pub fn check(spec: &AnalysisTemplateSpec, errors: &mut Vec<FieldError>) {
    check_metric_selectors(&spec.dry_run, &spec.measurement_retention, "spec", errors);
    for (i, a) in spec.args.iter().enumerate() {
        if a.value_from.is_some() {
            refuse(
                errors,
                format!("spec.args[{i}].valueFrom"),
                "values from Kubernetes secrets or fields; pass the value from the Rollout",
            );
        }
    }
    if spec.metrics.is_empty() {
        errors.push(FieldError::new(
            "spec.metrics",
            "at least one metric is required",
        ));
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        for (name, d) in [
            ("interval", &m.interval),
            ("initialDelay", &m.initial_delay),
        ] {
            if let Some(d) = d {
                if !has_placeholder(d) && parse_duration(d).is_none() {
                    errors.push(FieldError::new(
                        format!("{at}.{name}"),
                        format!("`{d}` is not a duration (30s, 5m, 1h)"),
                    ));
                }
            }
        }
        for (name, c) in [
            ("successCondition", &m.success_condition),
            ("failureCondition", &m.failure_condition),
        ] {
            if let Some(c) = c {
                // Arguments are known only when a run starts: check the syntax with each
                // `{{args.…}}` standing for a number (checked again, expanded, at run start).
                if let Err(e) = Condition::parse(&without_placeholders(c)) {
                    errors.push(FieldError::new(
                        format!("{at}.{name}"),
                        format!("`{c}`: {e}"),
                    ));
                }
            }
        }
        for (name, v) in [
            ("count", &m.count),
            ("failureLimit", &m.failure_limit),
            ("inconclusiveLimit", &m.inconclusive_limit),
            ("consecutiveErrorLimit", &m.consecutive_error_limit),
        ] {
            match v {
                None | Some(Value::Number(_)) => {}
                Some(Value::String(s)) if has_placeholder(s) || s.parse::<i64>().is_ok() => {}
                Some(other) => errors.push(FieldError::new(
                    format!("{at}.{name}"),
                    format!("`{other}` is not a whole number"),
                )),
            }
        }
        let p = &m.provider;
        let others = [
            ("job", &p.job),
            ("kayenta", &p.kayenta),
            ("datadog", &p.datadog),
            ("newRelic", &p.new_relic),
            ("wavefront", &p.wavefront),
            ("cloudWatch", &p.cloud_watch),
            ("graphite", &p.graphite),
            ("influxdb", &p.influxdb),
            ("skywalking", &p.skywalking),
            ("plugin", &p.plugin),
        ];
        for (name, v) in others {
            if v.is_some() {
                refuse(
                    errors,
                    format!("{at}.provider.{name}"),
                    "providers other than prometheus and web",
                );
            }
        }
        match (&p.prometheus, &p.web) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                format!("{at}.provider"),
                "only one provider per metric",
            )),
            (None, None) if others.iter().all(|(_, v)| v.is_none()) => errors.push(
                FieldError::new(format!("{at}.provider"), "prometheus or web is required"),
            ),
            _ => {}
        }
        if let Some(pr) = &p.prometheus {
            if pr.authentication.is_some() {
                refuse(
                    errors,
                    format!("{at}.provider.prometheus.authentication"),
                    "SigV4 / OAuth; use headers",
                );
            }
            if let Some(r) = &pr.range_query {
                let at = format!("{at}.provider.prometheus.rangeQuery");
                for (name, t) in [("start", &r.start), ("end", &r.end)] {
                    if let Err(e) = Condition::parse(&without_placeholders(t)) {
                        errors.push(FieldError::new(
                            format!("{at}.{name}"),
                            format!("`{t}`: {e}"),
                        ));
                    }
                }
                if !has_placeholder(&r.step) && !go_duration(&r.step).is_some_and(|s| s > 0.0) {
                    errors.push(FieldError::new(
                        format!("{at}.step"),
                        format!("`{}` is not a positive duration (30s, 1m, 1h30m)", r.step),
                    ));
                }
            }
            if pr.address.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.provider.prometheus.address"),
                    "required",
                ));
            }
            if pr.query.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.provider.prometheus.query"),
                    "required",
                ));
            }
        }
        if let Some(w) = &p.web {
            if w.authentication.is_some() {
                refuse(
                    errors,
                    format!("{at}.provider.web.authentication"),
                    "OAuth; use headers",
                );
            }
            if let Some(m) = &w.method {
                if !matches!(m.as_str(), "GET" | "POST" | "PUT") {
                    errors.push(FieldError::new(
                        format!("{at}.provider.web.method"),
                        format!("`{m}` is not GET, POST or PUT"),
                    ));
                }
            }
        }
    }
}
