//! Analysis runs with Argo's semantics. A run freezes its templates' metrics with the
//! arguments expanded; each metric takes one measurement per `interval` (after
//! `initialDelay`), `count` times (once when neither is set; until the run is stopped when only
//! the interval is). Each measurement is Successful, Failed, Inconclusive or Error:
//!
//! * a provider failure (Prometheus down, timeout, bad answer) is an **Error**; errors count
//!   toward `consecutiveErrorLimit` (default 4), never as failures;
//! * an **empty result or NaN is Inconclusive** unless the condition itself decides what it
//!   means (it calls `len` or `isNaN`) — never a silent success (argo-rollouts #4479, #1466);
//! * otherwise the conditions decide as in Argo: with both, success → Successful, failure →
//!   Failed, neither → Inconclusive; with only `successCondition`, false → Failed; with only
//!   `failureCondition`, false → Successful.
//!
//! A metric fails when its failures exceed `failureLimit` (default 0), is inconclusive when its
//! inconclusive measurements exceed `inconclusiveLimit` (default 0), and errs when consecutive
//! errors exceed `consecutiveErrorLimit`. The run takes the worst phase of its metrics; it
//! succeeds when every metric has taken its count of measurements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sluice_config::analysis_expr::{go_duration, Condition, EvalError, Value};
use sluice_config::argo::{AnalysisArg, RolloutAnalysis};
use sluice_config::argo_analysis::metric_name_matches;
use sluice_config::argo_analysis::{AnalysisTemplate, Metric};
use sluice_config::istio::parse_duration;

/// The outcome of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeasurementPhase {
    Successful,
    Failed,
    Inconclusive,
    Error,
}

/// The state of a metric or a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RunPhase {
    #[default]
    Running,
    Successful,
    Failed,
    Inconclusive,
    Error,
}

impl RunPhase {
    fn severity(self) -> u8 {
        match self {
            RunPhase::Successful => 0,
            RunPhase::Running => 1,
            RunPhase::Inconclusive => 2,
            RunPhase::Error => 3,
            RunPhase::Failed => 4,
        }
    }

    /// Finished (for better or worse).
    pub fn done(self) -> bool {
        self != RunPhase::Running
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub at_ms: u64,
    pub phase: MeasurementPhase,
    /// The value measured, as text (`[0.97]`), or empty on an error.
    pub value: String,
    /// Why it was assessed so.
    pub message: String,
}

/// A provider with arguments expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Provider {
    Prometheus {
        address: String,
        query: String,
        timeout_s: u64,
        headers: Vec<(String, String)>,
        /// A range query's window, when the metric has `rangeQuery`.
        #[serde(default)]
        range: Option<QueryRange>,
        /// `https://` without checking the certificate.
        #[serde(default)]
        insecure: bool,
    },
    Web {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        json_path: Option<String>,
        timeout_s: u64,
        body: Option<String>,
        /// `https://` without checking the certificate.
        #[serde(default)]
        insecure: bool,
    },
}

/// A Prometheus range query with arguments expanded: `start` and `end` are time expressions
/// (evaluated at each measurement), `step_s` the resolution in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRange {
    pub start: String,
    pub end: String,
    pub step_s: f64,
}

/// One metric of a run: its frozen definition and its measurements so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRun {
    pub name: String,
    pub provider: Provider,
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
    pub interval_ms: Option<u64>,
    pub count: Option<u32>,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    pub consecutive_error_limit: u32,
    pub next_at_ms: u64,
    pub taken: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
    pub phase: RunPhase,
    /// The most recent measurements (at most `keep`).
    pub measurements: Vec<Measurement>,
    /// A dry-run metric (`dryRun`): measured and reported, never deciding the run.
    #[serde(default)]
    pub dry_run: bool,
    /// Measurements kept (`measurementRetention`, default [`KEEP`]).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

/// Measurements kept per metric by default (Argo's).
pub const KEEP: usize = 10;

fn default_keep() -> u32 {
    KEEP as u32
}

/// What a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunKind {
    /// A canary step's `analysis` (0-based step index).
    Step(usize),
    /// The canary's background `analysis`.
    Background,
    /// Blue-green `prePromotionAnalysis`.
    PrePromotion,
    /// Blue-green `postPromotionAnalysis`.
    PostPromotion,
}

/// An analysis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRun {
    /// Unique within the Rollout (`revision-kind-n`).
    pub id: String,
    pub kind: RunKind,
    pub templates: Vec<String>,
    pub metrics: Vec<MetricRun>,
    pub phase: RunPhase,
    pub message: String,
    pub started_ms: u64,
}

fn expand(text: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = text.to_string();
    for (k, v) in args {
        out = out.replace(&format!("{{{{args.{k}}}}}"), v);
        out = out.replace(&format!("{{{{ args.{k} }}}}"), v);
    }
    if let Some(i) = out.find("{{") {
        let rest = &out[i..];
        let end = rest.find("}}").map(|e| e + 2).unwrap_or(rest.len());
        return Err(format!("`{}` has no value", &rest[..end]));
    }
    Ok(out)
}

fn number(
    v: &Option<Json>,
    args: &BTreeMap<String, String>,
    field: &str,
    default: u32,
) -> Result<u32, String> {
    match v {
        None => Ok(default),
        Some(Json::Number(n)) => n
            .as_u64()
            .map(|n| n as u32)
            .ok_or_else(|| format!("{field}: `{n}` is not a whole number")),
        Some(Json::String(s)) => expand(s, args)?
            .trim()
            .parse()
            .map_err(|_| format!("{field}: `{s}` is not a whole number")),
        Some(other) => Err(format!("{field}: `{other}` is not a whole number")),
    }
}

fn resolve(m: &Metric, args: &BTreeMap<String, String>, now_ms: u64) -> Result<MetricRun, String> {
    let e = |t: &str| expand(t, args).map_err(|e| format!("metric {}: {e}", m.name));
    let interval_ms = match &m.interval {
        Some(i) => Some(
            parse_duration(&e(i)?)
                .ok_or_else(|| format!("metric {}: interval `{i}` is not a duration", m.name))?
                .as_millis() as u64,
        ),
        None => None,
    };
    let delay_ms = match &m.initial_delay {
        Some(d) => parse_duration(&e(d)?)
            .ok_or_else(|| format!("metric {}: initialDelay `{d}` is not a duration", m.name))?
            .as_millis() as u64,
        None => 0,
    };
    let count = match (&m.count, interval_ms) {
        (Some(_), _) => Some(number(&m.count, args, "count", 1)?),
        (None, None) => Some(1),
        (None, Some(_)) => None,
    };
    let headers =
        |hs: &[sluice_config::argo_analysis::Header]| -> Result<Vec<(String, String)>, String> {
            hs.iter()
                .map(|h| Ok((h.key.clone(), e(&h.value)?)))
                .collect()
        };
    let provider = match (&m.provider.prometheus, &m.provider.web) {
        (Some(p), _) => Provider::Prometheus {
            address: e(&p.address)?,
            query: e(&p.query)?,
            timeout_s: p.timeout.unwrap_or(10),
            headers: headers(&p.headers)?,
            range: match &p.range_query {
                None => None,
                Some(r) => {
                    let (start, end, step) = (e(&r.start)?, e(&r.end)?, e(&r.step)?);
                    for t in [&start, &end] {
                        Condition::parse(t)
                            .map_err(|err| format!("metric {}: rangeQuery `{t}`: {err}", m.name))?;
                    }
                    let step_s = go_duration(&step).filter(|s| *s > 0.0).ok_or_else(|| {
                        format!(
                            "metric {}: rangeQuery step `{step}` is not a duration",
                            m.name
                        )
                    })?;
                    Some(QueryRange { start, end, step_s })
                }
            },
            insecure: p.insecure == Some(true),
        },
        (None, Some(w)) => Provider::Web {
            url: e(&w.url)?,
            method: w.method.clone().unwrap_or_else(|| "GET".into()),
            headers: headers(&w.headers)?,
            json_path: w.json_path.clone(),
            timeout_s: w.timeout_seconds.unwrap_or(10),
            body: match (&w.body, &w.json_body) {
                (Some(b), _) => Some(e(b)?),
                (None, Some(j)) => Some(e(&j.to_string())?),
                (None, None) => None,
            },
            insecure: w.insecure == Some(true),
        },
        (None, None) => return Err(format!("metric {}: no provider", m.name)),
    };
    let success_condition = m.success_condition.as_deref().map(e).transpose()?;
    let failure_condition = m.failure_condition.as_deref().map(e).transpose()?;
    for c in success_condition.iter().chain(&failure_condition) {
        Condition::parse(c).map_err(|err| format!("metric {}: `{c}`: {err}", m.name))?;
    }
    Ok(MetricRun {
        name: m.name.clone(),
        provider,
        success_condition,
        failure_condition,
        interval_ms,
        count,
        failure_limit: number(&m.failure_limit, args, "failureLimit", 0)?,
        inconclusive_limit: number(&m.inconclusive_limit, args, "inconclusiveLimit", 0)?,
        consecutive_error_limit: number(
            &m.consecutive_error_limit,
            args,
            "consecutiveErrorLimit",
            4,
        )?,
        next_at_ms: now_ms + delay_ms,
        taken: 0,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        errors: 0,
        consecutive_errors: 0,
        phase: RunPhase::Running,
        measurements: Vec::new(),
        dry_run: false,
        keep: default_keep(),
    })
}

/// Whether a value is "missing": an empty list, NaN, or a list holding NaN.
fn missing(v: &Value) -> Option<&'static str> {
    match v {
        Value::List(l) if l.is_empty() => Some("empty result"),
        Value::Number(n) if n.is_nan() => Some("NaN"),
        Value::List(l)
            if l.iter()
                .any(|x| matches!(x, Value::Number(n) if n.is_nan())) =>
        {
            Some("NaN in the result")
        }
        _ => None,
    }
}

/// Assess one measured value (or provider error) against a metric's conditions.
pub fn assess(m: &MetricRun, value: &Result<Value, String>) -> (MeasurementPhase, String) {
    let v = match value {
        Err(e) => return (MeasurementPhase::Error, e.clone()),
        Ok(v) => v,
    };
    let parse = |c: &Option<String>| c.as_deref().and_then(|c| Condition::parse(c).ok());
    let (success, failure) = (parse(&m.success_condition), parse(&m.failure_condition));
    if let Some(why) = missing(v) {
        let handled = success
            .iter()
            .chain(&failure)
            .any(Condition::handles_missing);
        if !handled {
            return (
                MeasurementPhase::Inconclusive,
                format!("{why}: the condition does not say what it means"),
            );
        }
    }
    let eval = |c: &Condition| -> Result<bool, (MeasurementPhase, String)> {
        c.evaluate(v).map_err(|e| match e {
            EvalError::OutOfRange { .. } => (
                MeasurementPhase::Inconclusive,
                format!("{}: {e}", c.source()),
            ),
            other => (MeasurementPhase::Error, format!("{}: {other}", c.source())),
        })
    };
    let outcome = (|| -> Result<(MeasurementPhase, String), (MeasurementPhase, String)> {
        Ok(match (&success, &failure) {
            (Some(s), Some(f)) => {
                if eval(f)? {
                    (
                        MeasurementPhase::Failed,
                        format!("failureCondition `{}` is true", f.source()),
                    )
                } else if eval(s)? {
                    (
                        MeasurementPhase::Successful,
                        format!("successCondition `{}` is true", s.source()),
                    )
                } else {
                    (
                        MeasurementPhase::Inconclusive,
                        "neither condition is true".into(),
                    )
                }
            }
            (Some(s), None) => {
                if eval(s)? {
                    (
                        MeasurementPhase::Successful,
                        format!("`{}` is true", s.source()),
                    )
                } else {
                    (
                        MeasurementPhase::Failed,
                        format!("`{}` is false", s.source()),
                    )
                }
            }
            (None, Some(f)) => {
                if eval(f)? {
                    (
                        MeasurementPhase::Failed,
                        format!("failureCondition `{}` is true", f.source()),
                    )
                } else {
                    (
                        MeasurementPhase::Successful,
                        format!("failureCondition `{}` is false", f.source()),
                    )
                }
            }
            (None, None) => (MeasurementPhase::Successful, "no condition".into()),
        })
    })();
    outcome.unwrap_or_else(|e| e)
}

impl MetricRun {
    fn record(&mut self, now_ms: u64, value: &Result<Value, String>) {
        let (phase, message) = assess(self, value);
        self.taken += 1;
        match phase {
            MeasurementPhase::Successful => self.successful += 1,
            MeasurementPhase::Failed => self.failed += 1,
            MeasurementPhase::Inconclusive => self.inconclusive += 1,
            MeasurementPhase::Error => self.errors += 1,
        }
        if phase == MeasurementPhase::Error {
            self.consecutive_errors += 1;
        } else {
            self.consecutive_errors = 0;
        }
        self.measurements.push(Measurement {
            at_ms: now_ms,
            phase,
            value: value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            message,
        });
        let keep = (self.keep as usize).max(1);
        while self.measurements.len() > keep {
            self.measurements.remove(0);
        }
        self.next_at_ms = now_ms + self.interval_ms.unwrap_or(0);
        self.phase = if self.failed > self.failure_limit {
            RunPhase::Failed
        } else if self.consecutive_errors > self.consecutive_error_limit {
            RunPhase::Error
        } else if self.inconclusive > self.inconclusive_limit {
            RunPhase::Inconclusive
        } else if self.count.is_some_and(|c| self.taken - self.errors >= c) {
            RunPhase::Successful
        } else {
            RunPhase::Running
        };
    }
}

impl AnalysisRun {
    /// Start a run of `analysis` (templates looked up in `templates`) with the Rollout's
    /// arguments. Errors name what is missing.
    pub fn start(
        id: String,
        kind: RunKind,
        analysis: &RolloutAnalysis,
        namespace: &str,
        templates: &[AnalysisTemplate],
        now_ms: u64,
    ) -> Result<AnalysisRun, String> {
        let mut metrics = Vec::new();
        let mut names = Vec::new();
        let mut dry_run = Vec::new();
        let mut retention = Vec::new();
        for r in &analysis.templates {
            let t = templates
                .iter()
                .find(|t| {
                    t.metadata.name == r.template_name
                        && (t.cluster == r.cluster_scope)
                        && (t.cluster || t.metadata.namespace() == namespace)
                })
                .ok_or_else(|| {
                    format!(
                        "{} `{}` not found",
                        if r.cluster_scope {
                            "ClusterAnalysisTemplate"
                        } else {
                            "AnalysisTemplate"
                        },
                        r.template_name
                    )
                })?;
            names.push(r.template_name.clone());
            let args = arguments(&t.spec.args, &analysis.args)?;
            for m in &t.spec.metrics {
                metrics.push(resolve(m, &args, now_ms)?);
            }
            dry_run.extend(&t.spec.dry_run);
            retention.extend(&t.spec.measurement_retention);
        }
        // As Argo: the templates' rules and the Rollout's together, each a regular expression that
        // must match some metric; a later retention rule wins.
        dry_run.extend(&analysis.dry_run);
        retention.extend(&analysis.measurement_retention);
        for (i, d) in dry_run.iter().enumerate() {
            let mut matched = false;
            for m in metrics
                .iter_mut()
                .filter(|m| metric_name_matches(&d.metric_name, &m.name))
            {
                m.dry_run = true;
                matched = true;
            }
            if !matched {
                return Err(format!(
                    "dryRun[{i}]: `{}` matches no metric name",
                    d.metric_name
                ));
            }
        }
        for (i, r) in retention.iter().enumerate() {
            let mut matched = false;
            for m in metrics
                .iter_mut()
                .filter(|m| metric_name_matches(&r.metric_name, &m.name))
            {
                m.keep = r.limit.max(1);
                matched = true;
            }
            if !matched {
                return Err(format!(
                    "measurementRetention[{i}]: `{}` matches no metric name",
                    r.metric_name
                ));
            }
        }
        Ok(AnalysisRun {
            id,
            kind,
            templates: names,
            metrics,
            phase: RunPhase::Running,
            message: String::new(),
            started_ms: now_ms,
        })
    }

    /// Metrics whose next measurement is due.
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        if self.phase.done() {
            return Vec::new();
        }
        self.metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| m.phase == RunPhase::Running && m.next_at_ms <= now_ms)
            .map(|(i, _)| i)
            .collect()
    }

    /// Record a measurement of metric `i` and update the run's phase.
    pub fn record(&mut self, i: usize, now_ms: u64, value: &Result<Value, String>) {
        if self.phase.done() {
            return;
        }
        let Some(m) = self.metrics.get_mut(i) else {
            return;
        };
        m.record(now_ms, value);
        // Dry-run metrics never decide: the worst phase is that of the others, and a dry-run
        // metric that failed stops measuring without stopping the run (as Argo).
        let worst = self
            .metrics
            .iter()
            .filter(|m| !m.dry_run)
            .map(|m| m.phase)
            .max_by_key(|p| p.severity())
            .unwrap_or(RunPhase::Successful);
        let all_done = self.metrics.iter().all(|m| {
            m.phase == RunPhase::Successful || (m.dry_run && m.phase != RunPhase::Running)
        });
        self.phase = match worst {
            RunPhase::Failed | RunPhase::Error | RunPhase::Inconclusive => worst,
            _ if all_done => RunPhase::Successful,
            _ => RunPhase::Running,
        };
        if let Some(m) = self.metrics.iter().find(|m| {
            !m.dry_run
                && m.phase == worst
                && worst != RunPhase::Successful
                && worst != RunPhase::Running
        }) {
            let last = m
                .measurements
                .last()
                .map(|x| x.message.clone())
                .unwrap_or_default();
            self.message = match worst {
                RunPhase::Failed => format!("metric {} failed {} time(s), more than failureLimit {} ({last})", m.name, m.failed, m.failure_limit),
                RunPhase::Error => format!("metric {} errored {} time(s) in a row, more than consecutiveErrorLimit {} ({last})", m.name, m.consecutive_errors, m.consecutive_error_limit),
                _ => format!("metric {} was inconclusive {} time(s), more than inconclusiveLimit {} ({last})", m.name, m.inconclusive, m.inconclusive_limit),
            };
        } else if self.phase == RunPhase::Successful {
            let dry: Vec<String> = self
                .metrics
                .iter()
                .filter(|m| m.dry_run && m.phase != RunPhase::Successful)
                .map(|m| format!("{} {:?}", m.name, m.phase))
                .collect();
            self.message = if dry.is_empty() {
                "every metric passed".into()
            } else {
                format!(
                    "every metric passed (dry run, not deciding: {})",
                    dry.join(", ")
                )
            };
        }
    }

    /// Stop a run that has no count (background analysis at the end of a release): it passed.
    pub fn terminate(&mut self) {
        if self.phase == RunPhase::Running {
            self.phase = RunPhase::Successful;
            self.message = "stopped at the end of the release, no metric failed".into();
        }
    }
}

/// The template's arguments with values: the Rollout's, else the template's defaults.
fn arguments(
    declared: &[sluice_config::argo_analysis::Argument],
    given: &[AnalysisArg],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for a in declared {
        let v = given
            .iter()
            .find(|g| g.name == a.name)
            .and_then(|g| g.value.clone())
            .or_else(|| a.value.clone());
        match v {
            Some(v) => {
                out.insert(a.name.clone(), v);
            }
            None => {
                return Err(format!(
                    "argument `{}` has no value (give it in the Rollout's analysis args)",
                    a.name
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::istio::{parse_text, Parsed};

    fn template(metric: &str) -> AnalysisTemplate {
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  args: [{{name: service}}, {{name: threshold, value: '0.95'}}]\n  metrics:\n  - name: rate\n    provider:\n      prometheus: {{address: 'http://127.0.0.1:9', query: 'rate{{service=\"{{{{args.service}}}}\"}}'}}\n{metric}"
        );
        match parse_text("t.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
        {
            Parsed::AnalysisTemplate(t) => *t,
            other => panic!("{other:?}"),
        }
    }

    /// An analysis of template `t` with `service: web`.
    fn analysis_of_t() -> RolloutAnalysis {
        RolloutAnalysis {
            templates: vec![sluice_config::argo::TemplateRef {
                template_name: "t".into(),
                cluster_scope: false,
            }],
            args: vec![AnalysisArg {
                name: "service".into(),
                value: Some("web".into()),
                value_from: None,
            }],
            ..Default::default()
        }
    }

    fn run(metric: &str) -> AnalysisRun {
        let a = analysis_of_t();
        AnalysisRun::start(
            "r".into(),
            RunKind::Background,
            &a,
            "default",
            &[template(metric)],
            0,
        )
        .unwrap()
    }

    fn list(x: f64) -> Result<Value, String> {
        Ok(Value::List(vec![Value::Number(x)]))
    }

    /// Argo's `dryRun` and `measurementRetention`, from the template and from the Rollout.
    #[test]
    fn dry_run_metrics_never_decide_and_retention_bounds_measurements() {
        let text = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  dryRun: [{metricName: 'lat.*'}]\n  measurementRetention: [{metricName: '.*', limit: 3}]\n  metrics:\n  - name: rate\n    successCondition: result[0] >= 0.95\n    interval: 1s\n    count: 4\n    provider: {prometheus: {address: 'http://127.0.0.1:9', query: rate}}\n  - name: latency\n    successCondition: result[0] < 500\n    interval: 1s\n    provider: {prometheus: {address: 'http://127.0.0.1:9', query: latency}}\n";
        let t = match parse_text("t.yaml", text).unwrap().remove(0) {
            Parsed::AnalysisTemplate(t) => *t,
            other => panic!("{other:?}"),
        };
        let mut a = analysis_of_t();
        a.measurement_retention = vec![sluice_config::argo_analysis::MeasurementRetention {
            metric_name: "rate".into(),
            limit: 2,
        }];
        let mut r = AnalysisRun::start(
            "r".into(),
            RunKind::Background,
            &a,
            "default",
            std::slice::from_ref(&t),
            0,
        )
        .unwrap();
        assert!(!r.metrics[0].dry_run && r.metrics[1].dry_run);
        assert_eq!(
            (r.metrics[0].keep, r.metrics[1].keep),
            (2, 3),
            "the Rollout's rule comes last"
        );
        // The dry-run metric fails: it stops, the run goes on.
        r.record(1, 0, &list(900.0));
        assert_eq!(r.metrics[1].phase, RunPhase::Failed);
        assert_eq!(r.phase, RunPhase::Running);
        for i in 0..4u64 {
            r.record(0, 1000 * i, &list(0.99));
        }
        assert_eq!(r.phase, RunPhase::Successful, "{}", r.message);
        assert!(
            r.message.contains("dry run, not deciding: latency Failed"),
            "{}",
            r.message
        );
        assert_eq!(r.metrics[0].measurements.len(), 2);
        // A rule that matches no metric stops the run from starting, as in Argo.
        a.dry_run = vec![sluice_config::argo_analysis::DryRun {
            metric_name: "^nothing$".into(),
        }];
        let e = AnalysisRun::start("r".into(), RunKind::Background, &a, "default", &[t], 0)
            .unwrap_err();
        assert!(e.contains("dryRun[1]"), "{e}");
        for (bad, needle) in [
            (
                "dryRun: [{metricName: '('}]",
                "spec.dryRun[0].metricName: `(` is not a regular expression",
            ),
            (
                "measurementRetention: [{metricName: x, limit: 0}]",
                "spec.measurementRetention[0].limit: must be at least 1",
            ),
        ] {
            let bad_text = text
                .replace(
                    "  measurementRetention: [{metricName: '.*', limit: 3}]\n",
                    "",
                )
                .replace("dryRun: [{metricName: 'lat.*'}]", bad);
            let e = parse_text("t.yaml", &bad_text).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn range_queries_are_checked_when_read_and_expanded_when_run() {
        let text = |start: &str, step: &str| {
            format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  args: [{{name: service}}, {{name: lookback, value: 5m}}]\n  metrics:\n  - name: latency\n    successCondition: 'all(result, # < 1000)'\n    provider:\n      prometheus:\n        address: http://127.0.0.1:9\n        query: x\n        rangeQuery: {{start: '{start}', end: 'now()', step: '{step}'}}\n"
            )
        };
        let good = text(r#"now() - duration("{{args.lookback}}")"#, "1m");
        let t = match parse_text("t.yaml", &good).unwrap().remove(0) {
            Parsed::AnalysisTemplate(t) => *t,
            other => panic!("{other:?}"),
        };
        let a = analysis_of_t();
        let r =
            AnalysisRun::start("r".into(), RunKind::Background, &a, "default", &[t], 0).unwrap();
        let Provider::Prometheus { range: Some(q), .. } = &r.metrics[0].provider else {
            panic!("{:?}", r.metrics[0].provider)
        };
        assert_eq!(q.start, r#"now() - duration("5m")"#);
        assert_eq!(q.end, "now()");
        assert_eq!(q.step_s, 60.0);

        for (start, step, needle) in [
            ("now() -", "1m", "rangeQuery.start"),
            ("now()", "1 minute", "rangeQuery.step"),
            ("now()", "0s", "rangeQuery.step"),
        ] {
            let e = parse_text("t.yaml", &text(start, step))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{start} {step}: {e}");
        }
    }

    #[test]
    fn arguments_are_expanded_and_required() {
        let r = run("    successCondition: result[0] >= {{args.threshold}}\n    interval: 1s\n    count: 2\n");
        let Provider::Prometheus { query, .. } = &r.metrics[0].provider else {
            panic!()
        };
        assert_eq!(query, "rate{service=\"web\"}");
        assert_eq!(
            r.metrics[0].success_condition.as_deref(),
            Some("result[0] >= 0.95")
        );
        let a = RolloutAnalysis {
            templates: vec![sluice_config::argo::TemplateRef {
                template_name: "t".into(),
                cluster_scope: false,
            }],
            ..Default::default()
        };
        let err = AnalysisRun::start(
            "r".into(),
            RunKind::Background,
            &a,
            "default",
            &[template("")],
            0,
        )
        .unwrap_err();
        assert!(err.contains("argument `service` has no value"), "{err}");
        let missing = RolloutAnalysis {
            templates: vec![sluice_config::argo::TemplateRef {
                template_name: "nope".into(),
                cluster_scope: false,
            }],
            ..Default::default()
        };
        assert!(
            AnalysisRun::start("r".into(), RunKind::Background, &missing, "default", &[], 0)
                .is_err()
        );
    }

    #[test]
    fn count_of_successes_passes_the_run() {
        let mut r =
            run("    successCondition: result[0] >= 0.95\n    interval: 1s\n    count: 2\n");
        assert_eq!(r.due(0), vec![0]);
        r.record(0, 0, &list(0.99));
        assert_eq!(
            (r.phase, r.due(500), r.due(1000)),
            (RunPhase::Running, vec![], vec![0])
        );
        r.record(0, 1000, &list(0.97));
        assert_eq!(r.phase, RunPhase::Successful);
    }

    #[test]
    fn failures_past_the_limit_fail_the_run() {
        let mut r =
            run("    successCondition: result[0] >= 0.95\n    interval: 1s\n    failureLimit: 1\n");
        r.record(0, 0, &list(0.5));
        assert_eq!(
            r.phase,
            RunPhase::Running,
            "one failure is within failureLimit 1"
        );
        r.record(0, 1000, &list(0.4));
        assert_eq!(r.phase, RunPhase::Failed);
        assert!(
            r.message
                .contains("failed 2 time(s), more than failureLimit 1"),
            "{}",
            r.message
        );
    }

    #[test]
    fn empty_and_nan_are_inconclusive_unless_the_condition_handles_them() {
        let mut r = run(
            "    successCondition: result[0] >= 0.95\n    interval: 1s\n    inconclusiveLimit: 1\n",
        );
        r.record(0, 0, &Ok(Value::List(vec![])));
        assert_eq!(
            r.metrics[0].measurements[0].phase,
            MeasurementPhase::Inconclusive
        );
        assert_eq!(r.phase, RunPhase::Running);
        r.record(0, 1000, &list(f64::NAN));
        assert_eq!(r.phase, RunPhase::Inconclusive, "never a silent success");
        let mut r = run("    successCondition: len(result) == 0 || result[0] >= 0.95\n");
        r.record(0, 0, &Ok(Value::List(vec![])));
        assert_eq!(
            r.phase,
            RunPhase::Successful,
            "the condition says what empty means"
        );
    }

    #[test]
    fn errors_count_toward_the_consecutive_limit_not_as_failures() {
        let mut r = run("    successCondition: result[0] >= 0.95\n    interval: 1s\n    consecutiveErrorLimit: 2\n");
        r.record(0, 0, &Err("connection refused".into()));
        r.record(0, 1000, &Err("connection refused".into()));
        r.record(0, 2000, &list(0.99));
        assert_eq!(
            (
                r.phase,
                r.metrics[0].failed,
                r.metrics[0].consecutive_errors
            ),
            (RunPhase::Running, 0, 0)
        );
        for t in 3..6 {
            r.record(0, t * 1000, &Err("timeout".into()));
        }
        assert_eq!(r.phase, RunPhase::Error);
        assert!(
            r.message.contains("errored 3 time(s) in a row"),
            "{}",
            r.message
        );
    }

    #[test]
    fn both_conditions_and_failure_only() {
        let mut r = run("    successCondition: result[0] >= 0.95\n    failureCondition: result[0] < 0.5\n    inconclusiveLimit: 0\n");
        r.record(0, 0, &list(0.7));
        assert_eq!(
            r.phase,
            RunPhase::Inconclusive,
            "between the two: inconclusive"
        );
        let mut r = run("    failureCondition: result[0] < 0.5\n");
        r.record(0, 0, &list(0.7));
        assert_eq!(r.phase, RunPhase::Successful);
        let mut r = run("    successCondition: result[0] >= 0.95\n    interval: 5s\n");
        r.record(0, 0, &list(0.99));
        assert_eq!(
            r.phase,
            RunPhase::Running,
            "no count with an interval: runs until stopped"
        );
        r.terminate();
        assert_eq!(r.phase, RunPhase::Successful);
    }
}
