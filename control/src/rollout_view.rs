//! The terminal view of a Rollout (`sluice rollout get`, `--watch`), like
//! `kubectl argo rollouts get rollout`: phase, steps with done / current / pending marks,
//! desired and acknowledged weights as bars, revisions and recent events.

use serde_json::Value;

fn bar(percent: u64, width: usize) -> String {
    let filled = (percent.min(100) as usize * width + 50) / 100;
    format!("{}{}", "█".repeat(filled), "·".repeat(width - filled))
}

fn labels(v: &Value) -> String {
    v.get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Render one Rollout view (the API's JSON).
pub fn render(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = String::new();
    out.push_str(&format!(
        "Name:        {}\nNamespace:   {}\nStrategy:    {}\n",
        s("name"),
        s("namespace"),
        s("strategy")
    ));
    let phase = s("phase");
    let mark = match phase.as_str() {
        "Healthy" => "✔",
        "Paused" => "॥",
        "Progressing" => "◌",
        _ => "✖",
    };
    let reason = v
        .get("pause_reason")
        .and_then(Value::as_str)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let remaining = v
        .get("pause_remaining_s")
        .and_then(Value::as_f64)
        .map(|r| format!(", {r:.0}s left"))
        .unwrap_or_default();
    out.push_str(&format!("Status:      {mark} {phase}{reason}{remaining}\n"));
    out.push_str(&format!("Message:     {}\n", s("message")));
    let steps = v
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !steps.is_empty() {
        out.push_str(&format!(
            "Step:        {}/{}\n",
            v.get("step").and_then(Value::as_u64).unwrap_or(0),
            steps.len()
        ));
    }
    if let Some(st) = v.get("stable_revision").filter(|x| !x.is_null()) {
        out.push_str(&format!(
            "Stable:      revision {} {{{}}}\n",
            st["number"],
            labels(st)
        ));
    }
    if let Some(c) = v.get("canary_revision").filter(|x| !x.is_null()) {
        out.push_str(&format!(
            "Canary:      revision {} {{{}}}\n",
            c["number"],
            labels(c)
        ));
    }
    let dw = v["desired_weight"]["canary"].as_u64().unwrap_or(0);
    let aw = v["acked"]["weight"].as_u64().unwrap_or(0);
    let (proxies, synced) = (
        v["acked"]["proxies"].as_u64().unwrap_or(0),
        v["acked"]["synced"].as_u64().unwrap_or(0),
    );
    out.push_str(&format!(
        "Weights:     desired  stable {:>3}%  canary {:>3}%  [{}]\n",
        100 - dw.min(100),
        dw,
        bar(dw, 20)
    ));
    out.push_str(&format!(
        "             acked    stable {:>3}%  canary {:>3}%  [{}]  by {synced}/{proxies} proxies\n",
        100 - aw.min(100),
        aw,
        bar(aw, 20)
    ));
    if let Some(hr) = v
        .get("header_routes")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        out.push_str(&format!(
            "Header routes: {}\n",
            hr.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(mr) = v
        .get("mirror_routes")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        out.push_str(&format!(
            "Mirror routes: {}\n",
            mr.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(a) = v.get("age_s").and_then(Value::as_u64) {
        out.push_str(&format!("Age:         {}\n", age(a)));
    }
    if !steps.is_empty() {
        out.push_str("Steps:\n");
        for st in &steps {
            let m = match st["state"].as_str() {
                Some("done") => "✔",
                Some("current") => "▶",
                _ => "○",
            };
            out.push_str(&format!(
                "  {m} {:>2}. {}\n",
                st["index"],
                st["step"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(runs) = v
        .get("analysis")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    {
        out.push_str("Analysis:\n");
        for run in runs {
            let kind = match &run["kind"] {
                Value::Object(m) => m
                    .get("Step")
                    .map(|i| format!("step {}", i.as_u64().unwrap_or(0) + 1))
                    .unwrap_or_default(),
                other => other.as_str().unwrap_or("").to_string(),
            };
            out.push_str(&format!(
                "  {} {:<12} {:<13} {}\n",
                run["id"].as_str().unwrap_or(""),
                kind,
                run["phase"].as_str().unwrap_or(""),
                run["message"].as_str().unwrap_or("")
            ));
            for m in run["metrics"].as_array().cloned().unwrap_or_default() {
                let last = m["measurements"].get(0);
                out.push_str(&format!(
                    "      {:<20} {:<13} ✔{} ✖{} ?{} ⚠{}  last: {} {}\n",
                    m["name"].as_str().unwrap_or(""),
                    m["phase"].as_str().unwrap_or(""),
                    m["successful"],
                    m["failed"],
                    m["inconclusive"],
                    m["errors"],
                    last.and_then(|l| l["value"].as_str()).unwrap_or("-"),
                    last.and_then(|l| l["message"].as_str())
                        .map(|s| format!("({s})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    if let Some(revs) = v.get("revisions").and_then(Value::as_array) {
        out.push_str("Revisions:\n");
        for r in revs {
            let done = if r["completed"].as_bool() == Some(true) {
                "completed"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {:>3}  {{{}}}  {done}\n",
                r["number"],
                labels(r)
            ));
        }
    }
    if let Some(events) = v.get("events").and_then(Value::as_array) {
        out.push_str("Events (newest first):\n");
        for e in events.iter().take(8) {
            let at = e["at_ms"].as_u64().unwrap_or(0) / 1000;
            let (h, m, s) = ((at / 3600) % 24, (at / 60) % 60, at % 60);
            out.push_str(&format!(
                "  {h:02}:{m:02}:{s:02} UTC  {:<18} {}\n",
                e["by"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// One line per Rollout (`sluice rollout list`).
pub fn render_list(list: &Value) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:<10} {:<12} {:<6} {:<8} {:<8}\n",
        "NAMESPACE", "NAME", "STRATEGY", "STATUS", "STEP", "WEIGHT", "REVISION"
    );
    for v in list["rollouts"].as_array().cloned().unwrap_or_default() {
        let steps = v["steps"].as_array().map(Vec::len).unwrap_or(0);
        let step = if steps == 0 {
            "-".to_string()
        } else {
            format!("{}/{steps}", v["step"])
        };
        let rev = v["canary_revision"]["number"]
            .as_u64()
            .or(v["stable_revision"]["number"].as_u64())
            .unwrap_or(0);
        out.push_str(&format!(
            "{:<12} {:<24} {:<10} {:<12} {:<6} {:<8} {:<8}\n",
            v["namespace"].as_str().unwrap_or(""),
            v["name"].as_str().unwrap_or(""),
            v["strategy"].as_str().unwrap_or(""),
            v["phase"].as_str().unwrap_or(""),
            step,
            format!("{}%", v["desired_weight"]["canary"]),
            rev
        ));
    }
    out
}

fn to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(m) => Yaml::Hash(
            m.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

/// A JSON document as YAML (`-o yaml`).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    if emitter.dump(&to_yaml(v)).is_err() {
        return v.to_string();
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_output_reads_back() {
        let v = serde_json::json!({"name": "web", "step": 2, "weights": {"canary": 20}, "events": [{"by": "api"}]});
        let text = yaml(&v);
        assert!(text.contains("name: web"), "{text}");
        let back = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(back[0]["weights"]["canary"].as_i64(), Some(20));
    }

    #[test]
    fn bars() {
        assert_eq!(bar(20, 10), "██········");
        assert_eq!(bar(100, 4), "████");
    }
}
