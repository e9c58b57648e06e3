//! The release state machine: Argo Rollouts' canary and blue-green semantics, without
//! Kubernetes.
//!
//! A revision is a distinct `spec.template` (its labels select the revision's endpoints). The
//! first revision is stable at once. A new template starts a release: for a canary, the steps
//! run in order (`setWeight`, `pause` with or without a duration, `setHeaderRoute`,
//! `setMirrorRoute`, `setCanaryScale`), and after the last step the canary becomes stable
//! (weights back to 100/0 on the new revision, managed routes removed). Blue-green switches the
//! active revision at promotion (at once, after `autoPromotionSeconds`, or on a human's promote
//! when `autoPromotionEnabled: false`), keeping the previous one addressable through the preview
//! service for `scaleDownDelaySeconds`.
//!
//! Everything here is a pure function of the spec, the stored status and the time, so every
//! transition is unit-tested, and the server persists the status before pushing its effect.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use sluice_config::argo::{HeaderRoutingMatch, RolloutAnalysis, RolloutSpec, SetMirrorRoute};
use sluice_config::argo_analysis::AnalysisTemplate;

use crate::analysis_run::{AnalysisRun, RunKind, RunPhase};

/// What the state machine needs from around it: the Rollout's namespace and the analysis
/// templates analysis runs are started from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env<'a> {
    pub namespace: &'a str,
    pub templates: &'a [AnalysisTemplate],
}

/// Argo's phases, plus `Aborted` (Argo shows an aborted rollout as `Degraded`; Sluice names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Phase {
    #[default]
    Progressing,
    Paused,
    Healthy,
    Degraded,
    Aborted,
}

/// One revision of the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u32,
    pub labels: BTreeMap<String, String>,
    /// Hash of the whole template: the revision's identity.
    pub hash: String,
    /// Became stable (or active) at least once.
    pub completed: bool,
    pub created_ms: u64,
}

/// One entry of the history: what changed, when, on whose request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub message: String,
    /// `controller`, `file` or the API caller.
    pub by: String,
}

/// The durable status of one Rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RolloutStatus {
    pub phase: Phase,
    pub message: String,
    /// Why it is paused (`CanaryPauseStep`, `PausedByUser`, `BlueGreenPause`, `ManualWeight`).
    pub pause_reason: Option<String>,
    /// When a timed pause ends (Unix ms); it survives restarts.
    pub pause_until_ms: Option<u64>,
    /// The current step (canary); `steps.len()` when no step is left.
    pub step: usize,
    pub revisions: Vec<Revision>,
    /// The stable (canary) or active (blue-green) revision.
    pub stable: u32,
    /// The revision being released, if any.
    pub canary: Option<u32>,
    /// Traffic share (percent) the canary should have now.
    pub weight: u32,
    /// Header routes by managed-route name.
    pub header_routes: BTreeMap<String, Vec<HeaderRoutingMatch>>,
    /// Mirror routes by managed-route name.
    pub mirror_routes: BTreeMap<String, SetMirrorRoute>,
    pub aborted: bool,
    /// `pause` (or `set-weight`) by a user, until `resume`/`promote`.
    pub user_paused: bool,
    /// A revision chosen by `undo`, in force until the template changes again.
    pub undo_target: Option<u32>,
    /// The template hash last seen in the spec (to tell a new edit from an `undo`).
    pub spec_hash: String,
    /// Aborted by a failed analysis (phase `Degraded`) rather than by a user (`Aborted`).
    #[serde(default)]
    pub degraded: bool,
    /// The current release's analysis runs.
    #[serde(default)]
    pub runs: Vec<AnalysisRun>,
    /// Blue-green: the active service already serves the new revision (post-promotion
    /// analysis is running); an abort switches it back.
    #[serde(default)]
    pub switched: bool,
    /// Blue-green: a human promoted; the switch waits only for analysis.
    #[serde(default)]
    pub promoted: bool,
    /// Blue-green: the previous active revision, addressable through the preview service until
    /// this time (Unix ms).
    pub previous_until_ms: Option<u64>,
    pub previous: Option<u32>,
    pub events: Vec<Event>,
}

/// An operation requested through the API or CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Promote { full: bool },
    Pause,
    Resume,
    Abort,
    Retry,
    Undo { to_revision: Option<u32> },
    SetWeight(u32),
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Promote { full: false } => "promote",
            Operation::Promote { full: true } => "promote --full",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Abort => "abort",
            Operation::Retry => "retry",
            Operation::Undo { .. } => "undo",
            Operation::SetWeight(_) => "set-weight",
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperationError {
    #[error("nothing to {0}: no release in progress")]
    NoRelease(&'static str),
    #[error("retry applies to an aborted rollout (phase is {0:?})")]
    NotAborted(Phase),
    #[error("revision {0} does not exist")]
    NoRevision(u32),
    #[error("no earlier revision completed successfully")]
    NothingToUndo,
    #[error("weight {0} is more than 100")]
    Weight(u32),
}

/// A stable identity of a template.
pub fn template_hash(spec: &RolloutSpec) -> String {
    let text = serde_json::to_string(&spec.template).unwrap_or_default();
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

const MAX_EVENTS: usize = 200;

impl RolloutStatus {
    fn event(&mut self, now_ms: u64, by: &str, message: impl Into<String>) {
        let message = message.into();
        self.message = message.clone();
        self.events.push(Event {
            at_ms: now_ms,
            message,
            by: by.to_string(),
        });
        if self.events.len() > MAX_EVENTS {
            let cut = self.events.len() - MAX_EVENTS;
            self.events.drain(..cut);
        }
    }

    /// The revision with this number.
    pub fn revision(&self, n: u32) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == n)
    }

    fn revision_for(&mut self, spec: &RolloutSpec, hash: &str, now_ms: u64) -> u32 {
        if let Some(r) = self.revisions.iter().find(|r| r.hash == hash) {
            return r.number;
        }
        let number = self.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        self.revisions.push(Revision {
            number,
            labels: spec.template.metadata.labels.clone(),
            hash: hash.to_string(),
            completed: false,
            created_ms: now_ms,
        });
        number
    }

    fn clear_release(&mut self) {
        self.canary = None;
        self.weight = 0;
        self.header_routes.clear();
        self.mirror_routes.clear();
        self.pause_until_ms = None;
        self.pause_reason = None;
        self.aborted = false;
        self.degraded = false;
        self.user_paused = false;
        self.switched = false;
        self.promoted = false;
        for r in &mut self.runs {
            r.terminate();
        }
    }

    fn start_release(&mut self, target: u32, now_ms: u64, by: &str) {
        self.clear_release();
        self.runs.clear();
        self.canary = Some(target);
        self.step = 0;
        self.phase = Phase::Progressing;
        let stable = self.stable;
        self.event(
            now_ms,
            by,
            format!("release of revision {target} started (stable: revision {stable})"),
        );
    }

    fn complete(&mut self, now_ms: u64, blue_green: Option<&sluice_config::argo::BlueGreen>) {
        let Some(c) = self.canary else { return };
        let old = self.stable;
        self.stable = c;
        if let Some(r) = self.revisions.iter_mut().find(|r| r.number == c) {
            r.completed = true;
        }
        self.clear_release();
        self.phase = Phase::Healthy;
        if let Some(bg) = blue_green {
            let delay = u64::from(bg.scale_down_delay_seconds.unwrap_or(30));
            self.previous = Some(old);
            self.previous_until_ms = Some(now_ms + delay * 1000);
        }
        self.event(
            now_ms,
            "controller",
            format!("revision {c} is stable (was revision {old})"),
        );
    }

    /// Bring the status in line with the spec and the time; returns whether anything changed.
    pub fn reconcile(&mut self, spec: &RolloutSpec, now_ms: u64) -> bool {
        self.reconcile_in(spec, &Env::default(), now_ms)
    }

    /// [`RolloutStatus::reconcile`] with analysis templates at hand.
    pub fn reconcile_in(&mut self, spec: &RolloutSpec, env: &Env<'_>, now_ms: u64) -> bool {
        let before = self.clone();
        let hash = template_hash(spec);
        if self.revisions.is_empty() {
            let n = self.revision_for(spec, &hash, now_ms);
            if let Some(r) = self.revisions.iter_mut().find(|r| r.number == n) {
                r.completed = true;
            }
            self.stable = n;
            self.step = steps_len(spec);
            self.spec_hash = hash.clone();
            self.phase = Phase::Healthy;
            self.event(
                now_ms,
                "controller",
                format!("revision {n} is stable (first revision)"),
            );
        }
        if hash != self.spec_hash {
            // The template changed (a new edit): it overrides any undo.
            self.spec_hash = hash.clone();
            self.undo_target = None;
            let target = self.revision_for(spec, &hash, now_ms);
            self.retarget(target, now_ms, "file");
        }
        if self.previous_until_ms.is_some_and(|t| now_ms >= t) {
            self.previous = None;
            self.previous_until_ms = None;
        }
        self.advance(spec, env, now_ms);
        *self != before
    }

    /// Abort because an analysis run failed: traffic back to stable, phase `Degraded`.
    fn abort_by_analysis(&mut self, now_ms: u64, why: String) {
        let stable = self.stable;
        self.weight = 0;
        self.header_routes.clear();
        self.mirror_routes.clear();
        self.pause_until_ms = None;
        self.pause_reason = None;
        self.aborted = true;
        self.degraded = true;
        self.switched = false;
        self.promoted = false;
        self.phase = Phase::Degraded;
        self.event(
            now_ms,
            "analysis",
            format!("aborted: {why}; traffic back to stable revision {stable}"),
        );
    }

    /// The run of `kind`, started if it does not exist yet. `None` (after aborting) when it
    /// cannot be started.
    fn ensure_run(
        &mut self,
        kind: RunKind,
        analysis: &RolloutAnalysis,
        env: &Env<'_>,
        now_ms: u64,
    ) -> Option<RunPhase> {
        if let Some(r) = self.runs.iter().find(|r| r.kind == kind) {
            return Some(r.phase);
        }
        let id = format!(
            "{}-{}",
            self.canary.unwrap_or(self.stable),
            self.runs.len() + 1
        );
        match AnalysisRun::start(id, kind, analysis, env.namespace, env.templates, now_ms) {
            Ok(run) => {
                let what = match kind {
                    RunKind::Step(i) => format!("step {}: analysis", i + 1),
                    RunKind::Background => "background analysis".into(),
                    RunKind::PrePromotion => "pre-promotion analysis".into(),
                    RunKind::PostPromotion => "post-promotion analysis".into(),
                };
                self.event(
                    now_ms,
                    "controller",
                    format!("{what} started ({})", run.templates.join(", ")),
                );
                self.runs.push(run);
                Some(RunPhase::Running)
            }
            Err(e) => {
                self.abort_by_analysis(now_ms, format!("analysis cannot start: {e}"));
                None
            }
        }
    }

    /// React to a finished run: `true` when the release may go on past it.
    fn run_outcome(&mut self, kind: RunKind, phase: RunPhase, now_ms: u64) -> bool {
        let message = self
            .runs
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| r.message.clone())
            .unwrap_or_default();
        match phase {
            RunPhase::Successful => true,
            RunPhase::Running => {
                self.phase = Phase::Progressing;
                false
            }
            RunPhase::Failed | RunPhase::Error => {
                self.abort_by_analysis(now_ms, format!("analysis {phase:?}: {message}"));
                false
            }
            RunPhase::Inconclusive => {
                if self.pause_reason.as_deref() != Some("InconclusiveAnalysis") {
                    self.pause_reason = Some("InconclusiveAnalysis".into());
                    self.event(
                        now_ms,
                        "analysis",
                        format!("paused for a human: analysis inconclusive: {message}"),
                    );
                }
                self.phase = Phase::Paused;
                false
            }
        }
    }

    /// Make `target` the desired revision.
    fn retarget(&mut self, target: u32, now_ms: u64, by: &str) {
        if target == self.stable {
            if self.canary.is_some() {
                let c = self.canary.unwrap_or_default();
                self.clear_release();
                self.phase = Phase::Healthy;
                self.event(
                    now_ms,
                    by,
                    format!("back to stable revision {target}; release of revision {c} dropped"),
                );
            }
        } else if self.canary != Some(target) {
            self.start_release(target, now_ms, by);
        }
    }

    /// Start the background analysis once the release reaches its `startingStep`; `false` when
    /// it stopped the release (failed: aborted; inconclusive: paused).
    fn background_ok(&mut self, spec: &RolloutSpec, env: &Env<'_>, now_ms: u64) -> bool {
        let Some(a) = spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.analysis.as_ref())
        else {
            return true;
        };
        if self.step < a.starting_step.unwrap_or(0) as usize {
            return true;
        }
        match self.ensure_run(RunKind::Background, a, env, now_ms) {
            Some(RunPhase::Successful | RunPhase::Running) => true,
            Some(phase) => {
                self.run_outcome(RunKind::Background, phase, now_ms);
                false
            }
            None => false,
        }
    }

    /// Run steps until one blocks (a pause, a running analysis) or the release completes.
    fn advance(&mut self, spec: &RolloutSpec, env: &Env<'_>, now_ms: u64) {
        if self.canary.is_none() {
            if !self.aborted {
                self.phase = Phase::Healthy;
            }
            return;
        }
        if self.aborted {
            self.phase = if self.degraded {
                Phase::Degraded
            } else {
                Phase::Aborted
            };
            return;
        }
        if spec.paused || self.user_paused {
            self.phase = Phase::Paused;
            if self.pause_reason.is_none() || spec.paused {
                self.pause_reason = Some("PausedByUser".into());
            }
            return;
        }
        if let Some(bg) = &spec.strategy.blue_green {
            if let Some(a) = &bg.pre_promotion_analysis {
                match self.ensure_run(RunKind::PrePromotion, a, env, now_ms) {
                    Some(phase) if self.run_outcome(RunKind::PrePromotion, phase, now_ms) => {}
                    _ => return,
                }
            }
            self.advance_blue_green(bg, env, now_ms);
            return;
        }

        let steps = spec
            .strategy
            .canary
            .as_ref()
            .map(|c| c.steps.as_slice())
            .unwrap_or(&[]);
        // Bounded: each pass either advances `step` or returns.
        for _ in 0..=steps.len() {
            if !self.background_ok(spec, env, now_ms) {
                return;
            }
            let Some(step) = steps.get(self.step) else {
                self.complete(now_ms, None);
                return;
            };
            if let Some(w) = step.set_weight {
                if self.weight != w {
                    self.weight = w;
                    self.event(
                        now_ms,
                        "controller",
                        format!("step {}: canary weight {w}%", self.step + 1),
                    );
                }
            } else if let Some(p) = &step.pause {
                match p.duration().ok().flatten() {
                    None => {
                        if self.pause_reason.as_deref() != Some("CanaryPauseStep") {
                            self.pause_reason = Some("CanaryPauseStep".into());
                            self.event(
                                now_ms,
                                "controller",
                                format!("step {}: paused until promoted", self.step + 1),
                            );
                        }
                        self.phase = Phase::Paused;
                        return;
                    }
                    Some(d) => {
                        let until = *self
                            .pause_until_ms
                            .get_or_insert(now_ms + d.as_millis() as u64);
                        if now_ms < until {
                            if self.pause_reason.as_deref() != Some("CanaryPauseStep") {
                                self.pause_reason = Some("CanaryPauseStep".into());
                                self.event(
                                    now_ms,
                                    "controller",
                                    format!("step {}: paused for {}s", self.step + 1, d.as_secs()),
                                );
                            }
                            self.phase = Phase::Paused;
                            return;
                        }
                        self.pause_until_ms = None;
                        self.pause_reason = None;
                    }
                }
            } else if let Some(a) = &step.analysis {
                let kind = RunKind::Step(self.step);
                match self.ensure_run(kind, a, env, now_ms) {
                    Some(phase) if self.run_outcome(kind, phase, now_ms) => {
                        self.event(
                            now_ms,
                            "analysis",
                            format!("step {}: analysis passed", self.step + 1),
                        );
                    }
                    _ => return,
                }
            } else if let Some(h) = &step.set_header_route {
                if h.matches.is_empty() {
                    self.header_routes.remove(&h.name);
                } else {
                    self.header_routes.insert(h.name.clone(), h.matches.clone());
                }
                self.event(
                    now_ms,
                    "controller",
                    format!(
                        "step {}: header route `{}` {}",
                        self.step + 1,
                        h.name,
                        if h.matches.is_empty() {
                            "removed"
                        } else {
                            "set"
                        }
                    ),
                );
            } else if let Some(m) = &step.set_mirror_route {
                if m.matches.is_empty() && m.percentage.is_none() {
                    self.mirror_routes.remove(&m.name);
                } else {
                    self.mirror_routes.insert(m.name.clone(), m.clone());
                }
                self.event(
                    now_ms,
                    "controller",
                    format!(
                        "step {}: mirror route `{}` {}",
                        self.step + 1,
                        m.name,
                        if m.matches.is_empty() && m.percentage.is_none() {
                            "removed"
                        } else {
                            "set"
                        }
                    ),
                );
            }
            // setCanaryScale: replica counts only; shown in the step list, moves no traffic.
            self.step += 1;
            self.pause_reason = None;
            self.phase = Phase::Progressing;
        }
    }

    fn advance_blue_green(
        &mut self,
        bg: &sluice_config::argo::BlueGreen,
        env: &Env<'_>,
        now_ms: u64,
    ) {
        let auto = bg.auto_promotion_enabled.unwrap_or(true);
        let ready = self.switched || self.promoted;
        if !ready && !auto {
            if self.pause_reason.as_deref() != Some("BlueGreenPause") {
                self.pause_reason = Some("BlueGreenPause".into());
                self.event(now_ms, "controller", "preview ready; paused until promoted");
            }
            self.phase = Phase::Paused;
            return;
        }
        if let (false, Some(secs)) = (ready, bg.auto_promotion_seconds) {
            let until = *self
                .pause_until_ms
                .get_or_insert(now_ms + u64::from(secs) * 1000);
            if now_ms < until {
                if self.pause_reason.as_deref() != Some("BlueGreenPause") {
                    self.pause_reason = Some("BlueGreenPause".into());
                    self.event(
                        now_ms,
                        "controller",
                        format!("preview ready; promoting in {secs}s"),
                    );
                }
                self.phase = Phase::Paused;
                return;
            }
        }
        if let Some(a) = &bg.post_promotion_analysis {
            if !self.switched {
                self.switched = true;
                self.pause_until_ms = None;
                self.pause_reason = None;
                let c = self.canary.unwrap_or_default();
                self.event(
                    now_ms,
                    "controller",
                    format!("active switched to revision {c}; post-promotion analysis decides"),
                );
            }
            match self.ensure_run(RunKind::PostPromotion, a, env, now_ms) {
                Some(phase) if self.run_outcome(RunKind::PostPromotion, phase, now_ms) => {}
                _ => return,
            }
        }
        self.complete(now_ms, Some(bg));
    }

    /// Apply an operation at `now_ms` on behalf of `by`.
    pub fn operate(
        &mut self,
        spec: &RolloutSpec,
        op: &Operation,
        now_ms: u64,
        by: &str,
    ) -> Result<(), OperationError> {
        self.operate_in(spec, &Env::default(), op, now_ms, by)
    }

    /// [`RolloutStatus::operate`] with analysis templates at hand.
    pub fn operate_in(
        &mut self,
        spec: &RolloutSpec,
        env: &Env<'_>,
        op: &Operation,
        now_ms: u64,
        by: &str,
    ) -> Result<(), OperationError> {
        match op {
            Operation::Promote { full } => {
                if self.canary.is_none() || self.aborted {
                    return Err(OperationError::NoRelease("promote"));
                }
                self.user_paused = false;
                let post = spec
                    .strategy
                    .blue_green
                    .as_ref()
                    .is_some_and(|bg| bg.post_promotion_analysis.is_some());
                if spec.strategy.blue_green.is_some() && post && !full {
                    // The switch happens now; post-promotion analysis decides whether it stays.
                    self.promoted = true;
                    self.pause_until_ms = None;
                    self.pause_reason = None;
                    self.event(now_ms, by, "promoted");
                } else if *full || spec.strategy.blue_green.is_some() {
                    self.event(now_ms, by, "promoted to the end");
                    self.complete(now_ms, spec.strategy.blue_green.as_ref());
                } else {
                    let steps = steps_len(spec);
                    let at_pause = spec
                        .strategy
                        .canary
                        .as_ref()
                        .and_then(|c| c.steps.get(self.step))
                        .is_some_and(|s| {
                            s.pause.is_some()
                                || (s.analysis.is_some()
                                    && self.pause_reason.as_deref() == Some("InconclusiveAnalysis"))
                        });
                    // A human decided past an inconclusive analysis: those runs are done.
                    self.runs.retain(|r| r.phase != RunPhase::Inconclusive);
                    self.pause_until_ms = None;
                    self.pause_reason = None;
                    if self.step < steps && at_pause {
                        self.step += 1;
                    }
                    self.event(
                        now_ms,
                        by,
                        format!(
                            "promoted: continuing at step {}",
                            (self.step + 1).min(steps)
                        ),
                    );
                }
            }
            Operation::Pause => {
                if !self.user_paused {
                    self.user_paused = true;
                    self.pause_reason = Some("PausedByUser".into());
                    self.event(now_ms, by, "paused");
                }
            }
            Operation::Resume => {
                if self.user_paused {
                    self.user_paused = false;
                    self.pause_reason = None;
                    self.event(now_ms, by, "resumed");
                }
            }
            Operation::Abort => {
                // Idempotent: aborting an aborted (or finished) release changes nothing.
                if let (Some(c), false) = (self.canary, self.aborted) {
                    let stable = self.stable;
                    self.weight = 0;
                    self.header_routes.clear();
                    self.mirror_routes.clear();
                    self.pause_until_ms = None;
                    self.pause_reason = None;
                    self.user_paused = false;
                    self.switched = false;
                    self.promoted = false;
                    self.aborted = true;
                    self.phase = Phase::Aborted;
                    self.event(now_ms, by, format!("aborted: traffic back to stable revision {stable} (revision {c} not released)"));
                }
            }
            Operation::Retry => {
                if !self.aborted {
                    return Err(OperationError::NotAborted(self.phase));
                }
                self.aborted = false;
                self.degraded = false;
                self.runs.clear();
                self.step = 0;
                self.phase = Phase::Progressing;
                self.event(now_ms, by, "retrying the release from step 1");
            }
            Operation::Undo { to_revision } => {
                let target = match to_revision {
                    Some(n) => {
                        self.revision(*n).ok_or(OperationError::NoRevision(*n))?;
                        *n
                    }
                    None => {
                        // The last revision that completed, other than the newest one (as
                        // KubeVela: v3 goes back to v1 when v2 never completed).
                        let newest = self.canary.unwrap_or(self.stable);
                        let candidate = if self.canary.is_some() {
                            Some(self.stable)
                        } else {
                            self.revisions
                                .iter()
                                .filter(|r| r.completed && r.number != newest)
                                .map(|r| r.number)
                                .max()
                        };
                        candidate.ok_or(OperationError::NothingToUndo)?
                    }
                };
                self.undo_target = Some(target);
                self.event(now_ms, by, format!("undo: revision {target} requested"));
                self.retarget(target, now_ms, by);
            }
            Operation::SetWeight(w) => {
                if *w > 100 {
                    return Err(OperationError::Weight(*w));
                }
                if self.canary.is_none() || self.aborted {
                    return Err(OperationError::NoRelease("set-weight"));
                }
                self.weight = *w;
                self.user_paused = true;
                self.pause_reason = Some("ManualWeight".into());
                self.event(
                    now_ms,
                    by,
                    format!("canary weight set to {w}% by hand (paused until promote or resume)"),
                );
            }
        }
        self.advance(spec, env, now_ms);
        Ok(())
    }

    /// Record a measurement of metric `metric` of run `run_id`; the release reacts on the next
    /// reconcile. Returns whether the run existed.
    pub fn record_measurement(
        &mut self,
        run_id: &str,
        metric: usize,
        now_ms: u64,
        value: &Result<sluice_config::analysis_expr::Value, String>,
    ) -> bool {
        match self.runs.iter_mut().find(|r| r.id == run_id) {
            Some(r) => {
                r.record(metric, now_ms, value);
                true
            }
            None => false,
        }
    }

    /// The revision whose labels should serve as "stable" and as "canary" now.
    pub fn serving(&self) -> (u32, Option<u32>) {
        (self.stable, self.canary)
    }

    /// The next time something is due (a timed pause or a blue-green delay), if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [self.pause_until_ms, self.previous_until_ms]
            .into_iter()
            .flatten()
            .min()
    }
}

fn steps_len(spec: &RolloutSpec) -> usize {
    spec.strategy
        .canary
        .as_ref()
        .map(|c| c.steps.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::istio::{parse_text, Parsed};

    fn rollout(steps: &str, version: &str) -> RolloutSpec {
        let text = format!(
            r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  template:
    metadata: {{labels: {{app: web, version: {version}}}}}
  strategy:
    canary:
      trafficRouting:
        managedRoutes: [{{name: hdr}}, {{name: mirror}}]
        istio:
          virtualService: {{name: web, routes: [primary]}}
          destinationRule: {{name: web, canarySubsetName: canary, stableSubsetName: stable}}
      steps: {steps}
"#
        );
        match parse_text("r.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
        {
            Parsed::Rollout(r) => r.spec,
            other => panic!("{other:?}"),
        }
    }

    fn blue_green(version: &str, extra: &str) -> RolloutSpec {
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  template:\n    metadata: {{labels: {{app: web, version: {version}}}}}\n  strategy:\n    blueGreen: {{activeService: web-active, previewService: web-preview{extra}}}\n"
        );
        match parse_text("r.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
        {
            Parsed::Rollout(r) => r.spec,
            other => panic!("{other:?}"),
        }
    }

    const STEPS: &str = "[{setWeight: 20}, {pause: {}}, {setWeight: 50}, {pause: {duration: 10s}}, {setWeight: 100}]";

    fn started() -> (RolloutStatus, RolloutSpec) {
        let mut s = RolloutStatus::default();
        s.reconcile(&rollout(STEPS, "v1"), 0);
        let spec = rollout(STEPS, "v2");
        s.reconcile(&spec, 1_000);
        (s, spec)
    }

    #[test]
    fn first_revision_is_stable_at_once() {
        let mut s = RolloutStatus::default();
        assert!(s.reconcile(&rollout(STEPS, "v1"), 0));
        assert_eq!(
            (s.phase, s.stable, s.canary, s.weight),
            (Phase::Healthy, 1, None, 0)
        );
        assert!(!s.reconcile(&rollout(STEPS, "v1"), 5), "nothing changes");
    }

    #[test]
    fn canary_walks_its_steps() {
        let (mut s, spec) = started();
        assert_eq!(
            (s.phase, s.canary, s.weight, s.step),
            (Phase::Paused, Some(2), 20, 1)
        );
        assert_eq!(s.pause_reason.as_deref(), Some("CanaryPauseStep"));
        // An indefinite pause waits, however long.
        assert!(!s.reconcile(&spec, 10_000_000));
        s.operate(&spec, &Operation::Promote { full: false }, 2_000, "alice")
            .unwrap();
        assert_eq!((s.phase, s.weight, s.step), (Phase::Paused, 50, 3));
        assert_eq!(
            s.pause_until_ms,
            Some(12_000),
            "the 10 s pause started at 2 s"
        );
        s.reconcile(&spec, 11_999);
        assert_eq!(s.phase, Phase::Paused);
        s.reconcile(&spec, 12_000);
        assert_eq!(
            (s.phase, s.stable, s.canary, s.weight),
            (Phase::Healthy, 2, None, 0)
        );
        assert!(s.revision(2).unwrap().completed);
        assert!(s
            .events
            .iter()
            .any(|e| e.by == "alice" && e.message.contains("promoted")));
    }

    #[test]
    fn header_and_mirror_routes_are_set_and_removed() {
        let steps = "[{setHeaderRoute: {name: hdr, match: [{headerName: lane, headerValue: {exact: test-v2}}]}}, {setMirrorRoute: {name: mirror, percentage: 30, match: [{method: {exact: GET}}]}}, {setCanaryScale: {replicas: 1}}, {pause: {}}, {setHeaderRoute: {name: hdr}}, {pause: {}}]";
        let mut s = RolloutStatus::default();
        s.reconcile(&rollout(steps, "v1"), 0);
        let spec = rollout(steps, "v2");
        s.reconcile(&spec, 1);
        assert_eq!(s.step, 3);
        assert_eq!(s.header_routes["hdr"][0].header_name, "lane");
        assert_eq!(s.mirror_routes["mirror"].percentage, Some(30));
        s.operate(&spec, &Operation::Promote { full: false }, 2, "u")
            .unwrap();
        assert!(
            s.header_routes.is_empty(),
            "removed by the step without match"
        );
        assert_eq!(s.step, 5);
        s.operate(&spec, &Operation::Promote { full: false }, 3, "u")
            .unwrap();
        assert_eq!(s.phase, Phase::Healthy);
        assert!(
            s.mirror_routes.is_empty(),
            "managed routes end with the release"
        );
    }

    #[test]
    fn promote_full_skips_every_step() {
        let (mut s, spec) = started();
        s.operate(&spec, &Operation::Promote { full: true }, 2_000, "u")
            .unwrap();
        assert_eq!((s.phase, s.stable, s.weight), (Phase::Healthy, 2, 0));
        assert_eq!(
            s.operate(&spec, &Operation::Promote { full: false }, 3_000, "u"),
            Err(OperationError::NoRelease("promote"))
        );
    }

    #[test]
    fn abort_is_idempotent_and_retry_restarts() {
        let (mut s, spec) = started();
        s.operate(&spec, &Operation::Abort, 2_000, "u").unwrap();
        assert_eq!(
            (s.phase, s.weight, s.stable, s.canary),
            (Phase::Aborted, 0, 1, Some(2))
        );
        let after_first = s.clone();
        s.operate(&spec, &Operation::Abort, 3_000, "u").unwrap();
        assert_eq!(s, after_first, "a second abort changes nothing");
        assert!(
            !s.reconcile(&spec, 4_000),
            "an aborted rollout stays aborted"
        );
        s.operate(&spec, &Operation::Retry, 5_000, "u").unwrap();
        assert_eq!((s.phase, s.weight, s.step), (Phase::Paused, 20, 1));
        assert_eq!(
            s.operate(&spec, &Operation::Retry, 6_000, "u"),
            Err(OperationError::NotAborted(Phase::Paused))
        );
    }

    #[test]
    fn pause_and_resume_hold_a_timed_pause_deadline() {
        let (mut s, spec) = started();
        s.operate(&spec, &Operation::Promote { full: false }, 2_000, "u")
            .unwrap();
        s.operate(&spec, &Operation::Pause, 3_000, "u").unwrap();
        assert_eq!(s.pause_reason.as_deref(), Some("PausedByUser"));
        s.reconcile(&spec, 20_000);
        assert_eq!(s.phase, Phase::Paused, "a user pause holds past the timer");
        s.operate(&spec, &Operation::Resume, 21_000, "u").unwrap();
        assert_eq!(
            (s.phase, s.stable),
            (Phase::Healthy, 2),
            "the timer had run out: complete"
        );
    }

    #[test]
    fn set_weight_overrides_and_pauses() {
        let (mut s, spec) = started();
        s.operate(&spec, &Operation::SetWeight(35), 2_000, "ops")
            .unwrap();
        assert_eq!((s.weight, s.phase), (35, Phase::Paused));
        assert_eq!(s.pause_reason.as_deref(), Some("ManualWeight"));
        assert_eq!(
            s.operate(&spec, &Operation::SetWeight(101), 2_000, "ops"),
            Err(OperationError::Weight(101))
        );
        s.operate(&spec, &Operation::Resume, 3_000, "ops").unwrap();
        assert_eq!(
            (s.weight, s.step, s.phase),
            (35, 1, Phase::Paused),
            "the override holds at the pause step"
        );
        s.operate(&spec, &Operation::Promote { full: false }, 4_000, "ops")
            .unwrap();
        assert_eq!(s.weight, 50, "the next setWeight step takes over");
    }

    #[test]
    fn undo_goes_back_to_the_last_completed_revision() {
        // v1 stable; v2 released fully; v3 released fully; undo -> v2.
        let mut s = RolloutStatus::default();
        s.reconcile(&rollout(STEPS, "v1"), 0);
        for (v, t) in [("v2", 10), ("v3", 20)] {
            let spec = rollout(STEPS, v);
            s.reconcile(&spec, t);
            s.operate(&spec, &Operation::Promote { full: true }, t + 1, "u")
                .unwrap();
        }
        let v3 = rollout(STEPS, "v3");
        assert_eq!(s.stable, 3);
        s.operate(&v3, &Operation::Undo { to_revision: None }, 30, "u")
            .unwrap();
        assert_eq!(
            (s.canary, s.weight),
            (Some(2), 20),
            "undo releases revision 2 through the steps"
        );
        s.operate(&v3, &Operation::Promote { full: true }, 31, "u")
            .unwrap();
        assert_eq!(s.stable, 2);
        assert!(
            !s.reconcile(&v3, 40),
            "the spec still says v3, but the undo holds until the next edit"
        );
        // v4 never completes; undo from v4's release goes back to stable v2.
        let v4 = rollout(STEPS, "v4");
        s.reconcile(&v4, 50);
        assert_eq!(s.canary, Some(4));
        s.operate(&v4, &Operation::Undo { to_revision: None }, 51, "u")
            .unwrap();
        assert_eq!((s.canary, s.stable, s.phase), (None, 2, Phase::Healthy));
        assert_eq!(
            s.operate(
                &v4,
                &Operation::Undo {
                    to_revision: Some(9)
                },
                52,
                "u"
            ),
            Err(OperationError::NoRevision(9))
        );
    }

    #[test]
    fn reverting_the_template_during_a_release_drops_it() {
        let (mut s, _) = started();
        s.reconcile(&rollout(STEPS, "v1"), 2_000);
        assert_eq!(
            (s.phase, s.canary, s.weight, s.stable),
            (Phase::Healthy, None, 0, 1)
        );
    }

    #[test]
    fn spec_paused_holds_the_release() {
        let (mut s, mut spec) = started();
        s.operate(&spec, &Operation::Promote { full: false }, 2_000, "u")
            .unwrap();
        spec.paused = true;
        s.reconcile(&spec, 50_000);
        assert_eq!((s.phase, s.weight), (Phase::Paused, 50));
        spec.paused = false;
        s.reconcile(&spec, 50_001);
        assert_eq!(s.phase, Phase::Healthy);
    }

    #[test]
    fn blue_green_switches_at_promotion_and_keeps_the_old_one_addressable() {
        let mut s = RolloutStatus::default();
        s.reconcile(
            &blue_green(
                "blue",
                ", autoPromotionEnabled: false, scaleDownDelaySeconds: 30",
            ),
            0,
        );
        let green = blue_green(
            "green",
            ", autoPromotionEnabled: false, scaleDownDelaySeconds: 30",
        );
        s.reconcile(&green, 1_000);
        assert_eq!((s.phase, s.stable, s.canary), (Phase::Paused, 1, Some(2)));
        assert_eq!(s.pause_reason.as_deref(), Some("BlueGreenPause"));
        s.operate(&green, &Operation::Promote { full: false }, 2_000, "u")
            .unwrap();
        assert_eq!(
            (s.phase, s.stable, s.previous, s.previous_until_ms),
            (Phase::Healthy, 2, Some(1), Some(32_000))
        );
        s.reconcile(&green, 32_000);
        assert_eq!(s.previous, None);

        let mut s = RolloutStatus::default();
        s.reconcile(&blue_green("blue", ", autoPromotionSeconds: 5"), 0);
        let green = blue_green("green", ", autoPromotionSeconds: 5");
        s.reconcile(&green, 1_000);
        assert_eq!(s.phase, Phase::Paused);
        s.reconcile(&green, 6_000);
        assert_eq!((s.phase, s.stable), (Phase::Healthy, 2));

        let mut s = RolloutStatus::default();
        s.reconcile(&blue_green("blue", ""), 0);
        s.reconcile(&blue_green("green", ""), 1);
        assert_eq!(
            (s.phase, s.stable),
            (Phase::Healthy, 2),
            "auto-promotion by default"
        );
    }

    #[test]
    fn operations_in_every_phase() {
        // Healthy: promote, set-weight and retry are refused; pause/resume/abort change nothing
        // that moves traffic.
        let mut s = RolloutStatus::default();
        let v1 = rollout(STEPS, "v1");
        s.reconcile(&v1, 0);
        assert!(s
            .operate(&v1, &Operation::Promote { full: false }, 1, "u")
            .is_err());
        assert!(s.operate(&v1, &Operation::SetWeight(10), 1, "u").is_err());
        assert!(s.operate(&v1, &Operation::Retry, 1, "u").is_err());
        s.operate(&v1, &Operation::Abort, 1, "u").unwrap();
        assert_eq!((s.phase, s.weight), (Phase::Healthy, 0));
        assert_eq!(
            s.operate(&v1, &Operation::Undo { to_revision: None }, 1, "u"),
            Err(OperationError::NothingToUndo)
        );
        // Aborted: promote refused; undo goes to stable.
        let (mut s, spec) = started();
        s.operate(&spec, &Operation::Abort, 2, "u").unwrap();
        assert!(s
            .operate(&spec, &Operation::Promote { full: false }, 3, "u")
            .is_err());
        assert!(s.operate(&spec, &Operation::SetWeight(5), 3, "u").is_err());
        s.operate(&spec, &Operation::Undo { to_revision: None }, 4, "u")
            .unwrap();
        assert_eq!((s.phase, s.canary, s.stable), (Phase::Healthy, None, 1));
    }

    fn templates() -> Vec<AnalysisTemplate> {
        let text = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: rate}\nspec:\n  args: [{name: service}]\n  metrics:\n  - name: success\n    successCondition: result[0] >= 0.95\n    provider: {prometheus: {address: 'http://127.0.0.1:9', query: 'x{s=\"{{args.service}}\"}'}}\n";
        match parse_text("t.yaml", text)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
        {
            Parsed::AnalysisTemplate(t) => vec![*t],
            other => panic!("{other:?}"),
        }
    }

    const WITH_ANALYSIS: &str = "[{setWeight: 20}, {analysis: {templates: [{templateName: rate}], args: [{name: service, value: web}]}}, {setWeight: 50}, {pause: {}}]";

    fn sample(x: f64) -> Result<sluice_config::analysis_expr::Value, String> {
        Ok(sluice_config::analysis_expr::Value::List(vec![
            sluice_config::analysis_expr::Value::Number(x),
        ]))
    }

    #[test]
    fn a_step_analysis_gates_the_next_step() {
        let t = templates();
        let env = Env {
            namespace: "default",
            templates: &t,
        };
        let mut s = RolloutStatus::default();
        s.reconcile_in(&rollout(WITH_ANALYSIS, "v1"), &env, 0);
        let spec = rollout(WITH_ANALYSIS, "v2");
        s.reconcile_in(&spec, &env, 1);
        assert_eq!(
            (s.phase, s.step, s.weight, s.runs.len()),
            (Phase::Progressing, 1, 20, 1)
        );
        assert!(!s.reconcile_in(&spec, &env, 2), "waits for the measurement");
        let id = s.runs[0].id.clone();
        assert!(s.record_measurement(&id, 0, 3, &sample(0.99)));
        s.reconcile_in(&spec, &env, 4);
        assert_eq!(
            (s.phase, s.step, s.weight),
            (Phase::Paused, 3, 50),
            "passed: on to 50 %"
        );
    }

    #[test]
    fn a_failed_analysis_aborts_as_degraded() {
        let t = templates();
        let env = Env {
            namespace: "default",
            templates: &t,
        };
        let mut s = RolloutStatus::default();
        s.reconcile_in(&rollout(WITH_ANALYSIS, "v1"), &env, 0);
        let spec = rollout(WITH_ANALYSIS, "v2");
        s.reconcile_in(&spec, &env, 1);
        let id = s.runs[0].id.clone();
        s.record_measurement(&id, 0, 2, &sample(0.5));
        s.reconcile_in(&spec, &env, 3);
        assert_eq!(
            (s.phase, s.weight, s.aborted, s.canary),
            (Phase::Degraded, 0, true, Some(2))
        );
        assert!(s.message.contains("analysis Failed"), "{}", s.message);
        assert!(s.events.iter().any(|e| e.by == "analysis"));
        s.operate_in(&spec, &env, &Operation::Retry, 4, "u")
            .unwrap();
        assert_eq!(
            (s.phase, s.step, s.runs.len()),
            (Phase::Progressing, 1, 1),
            "a fresh run"
        );
    }

    #[test]
    fn an_inconclusive_analysis_pauses_for_a_human() {
        let t = templates();
        let env = Env {
            namespace: "default",
            templates: &t,
        };
        let mut s = RolloutStatus::default();
        s.reconcile_in(&rollout(WITH_ANALYSIS, "v1"), &env, 0);
        let spec = rollout(WITH_ANALYSIS, "v2");
        s.reconcile_in(&spec, &env, 1);
        let id = s.runs[0].id.clone();
        s.record_measurement(
            &id,
            0,
            2,
            &Ok(sluice_config::analysis_expr::Value::List(vec![])),
        );
        s.reconcile_in(&spec, &env, 3);
        assert_eq!((s.phase, s.weight), (Phase::Paused, 20));
        assert_eq!(s.pause_reason.as_deref(), Some("InconclusiveAnalysis"));
        s.operate_in(&spec, &env, &Operation::Promote { full: false }, 4, "human")
            .unwrap();
        assert_eq!(
            (s.step, s.weight),
            (3, 50),
            "the human's promote goes past it"
        );
    }

    #[test]
    fn background_analysis_and_missing_templates() {
        let t = templates();
        let env = Env {
            namespace: "default",
            templates: &t,
        };
        let text = "[{setWeight: 20}, {pause: {}}]";
        let bg = |v: &str| {
            let mut spec = rollout(text, v);
            if let Some(c) = spec.strategy.canary.as_mut() {
                c.analysis = Some(RolloutAnalysis {
                    templates: vec![sluice_config::argo::TemplateRef {
                        template_name: "rate".into(),
                        cluster_scope: false,
                    }],
                    args: vec![sluice_config::argo::AnalysisArg {
                        name: "service".into(),
                        value: Some("web".into()),
                        value_from: None,
                    }],
                    starting_step: Some(1),
                    ..Default::default()
                });
            }
            spec
        };
        let mut s = RolloutStatus::default();
        s.reconcile_in(&bg("v1"), &env, 0);
        let spec = bg("v2");
        s.reconcile_in(&spec, &env, 1);
        assert_eq!(
            (s.phase, s.runs.len()),
            (Phase::Paused, 1),
            "started from step 1, alongside the pause"
        );
        let id = s.runs[0].id.clone();
        s.record_measurement(&id, 0, 2, &sample(0.1));
        s.reconcile_in(&spec, &env, 3);
        assert_eq!((s.phase, s.weight), (Phase::Degraded, 0));

        let mut s = RolloutStatus::default();
        let none = Env {
            namespace: "default",
            templates: &[],
        };
        s.reconcile_in(&rollout(WITH_ANALYSIS, "v1"), &none, 0);
        s.reconcile_in(&rollout(WITH_ANALYSIS, "v2"), &none, 1);
        assert_eq!(s.phase, Phase::Degraded);
        assert!(
            s.message.contains("AnalysisTemplate `rate` not found"),
            "{}",
            s.message
        );
    }

    #[test]
    fn blue_green_post_promotion_analysis_keeps_or_reverts_the_switch() {
        let t = templates();
        let env = Env {
            namespace: "default",
            templates: &t,
        };
        let post = ", postPromotionAnalysis: {templates: [{templateName: rate}], args: [{name: service, value: web}]}";
        let mut s = RolloutStatus::default();
        s.reconcile_in(&blue_green("blue", post), &env, 0);
        let green = blue_green("green", post);
        s.reconcile_in(&green, &env, 1);
        assert_eq!(
            (s.switched, s.stable, s.phase),
            (true, 1, Phase::Progressing),
            "switched, not yet stable"
        );
        let id = s.runs[0].id.clone();
        s.record_measurement(&id, 0, 2, &sample(0.99));
        s.reconcile_in(&green, &env, 3);
        assert_eq!(
            (s.switched, s.stable, s.phase),
            (false, 2, Phase::Healthy),
            "kept"
        );

        let mut s = RolloutStatus::default();
        s.reconcile_in(&blue_green("blue", post), &env, 0);
        s.reconcile_in(&green, &env, 1);
        let id = s.runs[0].id.clone();
        s.record_measurement(&id, 0, 2, &sample(0.2));
        s.reconcile_in(&green, &env, 3);
        assert_eq!(
            (s.switched, s.stable, s.phase),
            (false, 1, Phase::Degraded),
            "switched back"
        );
    }
}
