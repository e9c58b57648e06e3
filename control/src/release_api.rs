//! The release API's operations, shared by the HTTP/JSON endpoints and the gRPC service
//! (`sluice.control.v1`): list, get, operations, apply, create, route weights. Each change is
//! stored before the controller is woken to publish it.

use serde_json::{json, Value};
use sluice_config::istio::Parsed;

use crate::rollout_create::CreateRequest;
use crate::rollout_engine::Operation;
use crate::rollout_manager::ManagerError;
use crate::route_weights::Weights;
use crate::server::{lock, parse_applied, State};

/// An API failure, with the HTTP status it maps to.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::NotFound(k) => ApiError::new(404, format!("rollout {k} not found")),
            ManagerError::Operation(e) => ApiError::new(409, e.to_string()),
            ManagerError::Store(e) => ApiError::new(500, e.to_string()),
        }
    }
}

impl From<crate::rollout_store::StoreError> for ApiError {
    fn from(e: crate::rollout_store::StoreError) -> Self {
        ApiError::new(500, e.to_string())
    }
}

/// Whether an `Authorization` value carries `token` as a bearer token. The comparison has no
/// early exit, so timing does not reveal how much of a guess matched.
pub(crate) fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|p| {
            p.len() == token.len()
                && p.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

/// Every Rollout's view.
pub(crate) fn list(state: &State) -> Value {
    let p = state.registry.list();
    let m = lock(&state.manager);
    let list: Vec<Value> = m.keys().iter().filter_map(|k| m.view(k, &p)).collect();
    json!({"rollouts": list})
}

/// One Rollout's view.
pub(crate) fn get(state: &State, ns: &str, name: &str) -> Result<Value, ApiError> {
    let p = state.registry.list();
    lock(&state.manager)
        .view(&format!("{ns}/{name}"), &p)
        .ok_or_else(|| ApiError::new(404, format!("rollout {ns}/{name} not found")))
}

/// Apply an operation on behalf of `by`.
pub(crate) fn operate(
    state: &State,
    ns: &str,
    name: &str,
    op: &Operation,
    by: &str,
) -> Result<Value, ApiError> {
    let k = format!("{ns}/{name}");
    lock(&state.manager).operate(&k, op, by)?;
    tracing::info!(rollout = %k, op = op.name(), by = %by, "operation applied");
    state.wake.notify_one();
    get(state, ns, name)
}

fn parsed_key(p: &Parsed) -> String {
    match p {
        Parsed::Istio(r) => r.key(),
        Parsed::Rollout(r) => format!("Rollout {}/{}", r.metadata.namespace(), r.metadata.name),
        Parsed::AnalysisTemplate(t) => format!(
            "AnalysisTemplate {}/{}",
            t.metadata.namespace(),
            t.metadata.name
        ),
        Parsed::Other { kind, name, .. } => format!("{kind} {name}"),
    }
}

/// Store documents (already validated) and refresh the parsed set.
fn store_documents(state: &State, docs: &[Value], origin: &str) -> Result<Vec<String>, ApiError> {
    let mut keys = Vec::new();
    let m = lock(&state.manager);
    for d in docs {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
        let meta = d.get("metadata");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = format!("{kind}/{ns}/{name}");
        m.store().save_applied(&key, Some(&d.to_string()))?;
        keys.push(key);
    }
    if m.durable() {
        *lock(&state.applied) = parse_applied(m.store())?;
    } else {
        // In memory only: merge what this request brought into what was there.
        let text: String = docs.iter().map(|d| format!("{d}\n---\n")).collect();
        let more = sluice_config::istio::parse_text(origin, &text)
            .map_err(|e| ApiError::new(400, e.to_string()))?;
        let mut applied = lock(&state.applied);
        for p in more {
            let k = parsed_key(&p);
            applied.retain(|x| parsed_key(x) != k);
            applied.push(p);
        }
    }
    Ok(keys)
}

/// `apply`: validate every document of a YAML text, then store them.
pub(crate) fn apply(state: &State, body: &[u8]) -> Result<Value, ApiError> {
    let text = String::from_utf8_lossy(body);
    sluice_config::istio::parse_text("request", &text)
        .map_err(|e| ApiError::new(400, e.to_string()))?;
    let docs: Vec<Value> = sluice_config::source::parse_documents("request", &text)
        .map_err(|e| ApiError::new(400, e.to_string()))?
        .into_iter()
        .map(|d| d.value)
        .collect();
    let keys = store_documents(state, &docs, "request")?;
    state.wake.notify_one();
    Ok(json!({"applied": keys}))
}

/// `create`: the release form. Revision 1 (stable labels) is recorded as stable, then the
/// canary labels start the release.
pub(crate) fn create(state: &State, req: &CreateRequest, by: &str) -> Result<Value, ApiError> {
    let [dr, vs, stable, canary] =
        crate::rollout_create::documents(req).map_err(|e| ApiError::new(400, e.to_string()))?;
    let k = format!("{}/{}", req.namespace, req.name);
    if lock(&state.manager).exists(&k) {
        return Err(ApiError::new(409, format!("rollout {k} exists")));
    }
    let text: String = [&dr, &vs, &stable]
        .iter()
        .map(|d| format!("{d}\n---\n"))
        .collect();
    let parsed = sluice_config::istio::parse_text("create", &text)
        .map_err(|e| ApiError::new(400, e.to_string()))?;
    let first = parsed.into_iter().find_map(|p| match p {
        Parsed::Rollout(r) => Some(*r),
        _ => None,
    });
    let Some(first) = first else {
        return Err(ApiError::new(500, "create produced no Rollout"));
    };
    store_documents(state, &[dr, vs, stable], "create")?;
    lock(&state.manager).seed(&first)?;
    store_documents(state, &[canary], "create")?;
    tracing::info!(rollout = %k, by = %by, "rollout created");
    state.wake.notify_one();
    Ok(json!({"created": k}))
}

/// `route set-weight`: weights for a route no Rollout manages.
pub(crate) fn set_route_weights(
    state: &State,
    ns: &str,
    vs: &str,
    route: &str,
    weights: Weights,
    by: &str,
) -> Result<Value, ApiError> {
    crate::route_weights::validate(&lock(&state.resources), ns, vs, route, &weights)
        .map_err(|e| ApiError::new(400, e.to_string()))?;
    let key = format!("{ns}/{vs}/{route}");
    let text = serde_json::to_string(&weights).map_err(|e| ApiError::new(500, e.to_string()))?;
    lock(&state.manager)
        .store()
        .save_route_weights(&key, &text)?;
    lock(&state.route_weights).insert(key.clone(), weights.clone());
    tracing::info!(route = %key, ?weights, by = %by, "route weights set");
    state.wake.notify_one();
    Ok(json!({"route": key, "weights": weights}))
}
