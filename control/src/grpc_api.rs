//! The release API over gRPC (`sluice.control.v1.Releases`), served on the API address beside
//! the HTTP/JSON endpoints; both call the same operations ([`crate::release_api`]). Mutating
//! calls need `authorization: Bearer <token>` metadata when the control plane has a token
//! (`UNAUTHENTICATED` otherwise).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_proto::control::v1::releases_server::Releases;
use sluice_proto::control::v1::{
    ApplyRequest, ApplyResponse, CreateRequest, ListRequest, ListResponse, PromoteRequest,
    RolloutRef, RolloutView, SetWeightRequest, UndoRequest,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::release_api::{self, ApiError};
use crate::rollout_engine::Operation;
use crate::server::State;

/// The gRPC service over the control plane's state.
#[derive(Clone)]
pub struct ReleaseService {
    pub(crate) state: Arc<State>,
}

fn status(e: ApiError) -> Status {
    match e.status {
        400 => Status::invalid_argument(e.message),
        401 => Status::unauthenticated(e.message),
        404 => Status::not_found(e.message),
        409 => Status::failed_precondition(e.message),
        _ => Status::internal(e.message),
    }
}

/// The protobuf view of the API's JSON view.
pub fn view(v: &Value) -> RolloutView {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |v: &Value| v.as_u64().unwrap_or(0) as u32;
    RolloutView {
        namespace: s("namespace"),
        name: s("name"),
        strategy: s("strategy"),
        phase: s("phase"),
        message: s("message"),
        pause_reason: s("pause_reason"),
        step: n(&v["step"]),
        steps: v["steps"].as_array().map(Vec::len).unwrap_or(0) as u32,
        stable_revision: n(&v["stable_revision"]["number"]),
        canary_revision: n(&v["canary_revision"]["number"]),
        desired_canary_weight: n(&v["desired_weight"]["canary"]),
        acked_canary_weight: n(&v["acked"]["weight"]),
        proxies: n(&v["acked"]["proxies"]),
        proxies_synced: n(&v["acked"]["synced"]),
        json: v.to_string(),
    }
}

fn reference(r: Option<RolloutRef>) -> Result<(String, String), Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("rollout is required"))?;
    if r.name.is_empty() {
        return Err(Status::invalid_argument("rollout name is required"));
    }
    let ns = if r.namespace.is_empty() {
        "default".to_string()
    } else {
        r.namespace
    };
    Ok((ns, r.name))
}

impl ReleaseService {
    /// Check the bearer token of a mutating call; returns who asked (for the history).
    fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if let Some(token) = &self.state.token {
            let authorization = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let ok = release_api::bearer_matches(authorization, token);
            if !ok {
                return Err(Status::unauthenticated(
                    "authorization: Bearer <token> required",
                ));
            }
        }
        let user = req
            .metadata()
            .get("x-sluice-user")
            .and_then(|v| v.to_str().ok());
        Ok(user
            .map(|u| format!("grpc ({u})"))
            .unwrap_or_else(|| "grpc".into()))
    }

    fn operate(
        &self,
        r: Option<RolloutRef>,
        op: Operation,
        by: &str,
    ) -> Result<Response<RolloutView>, Status> {
        let (ns, name) = reference(r)?;
        let v = release_api::operate(&self.state, &ns, &name, &op, by).map_err(status)?;
        Ok(Response::new(view(&v)))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<RolloutView, Status>> + Send>>;

#[tonic::async_trait]
impl Releases for ReleaseService {
    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let v = release_api::list(&self.state);
        let rollouts = v["rollouts"]
            .as_array()
            .map(|l| l.iter().map(view).collect())
            .unwrap_or_default();
        Ok(Response::new(ListResponse { rollouts }))
    }

    async fn get(&self, req: Request<RolloutRef>) -> Result<Response<RolloutView>, Status> {
        let (ns, name) = reference(Some(req.into_inner()))?;
        let v = release_api::get(&self.state, &ns, &name).map_err(status)?;
        Ok(Response::new(view(&v)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<RolloutRef>) -> Result<Response<WatchStream>, Status> {
        let (ns, name) = reference(Some(req.into_inner()))?;
        release_api::get(&self.state, &ns, &name).map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let v = match release_api::get(&state, &ns, &name) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                // The view without its clock-driven fields: send only real changes.
                let mut key = v.clone();
                if let Some(m) = key.as_object_mut() {
                    m.remove("age_s");
                    m.remove("pause_remaining_s");
                }
                let key = key.to_string();
                if key != last {
                    last = key;
                    if tx.send(Ok(view(&v))).await.is_err() {
                        return; // the client went away
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        self.caller(&req)?;
        let v =
            release_api::apply(&self.state, req.into_inner().yaml.as_bytes()).map_err(status)?;
        let applied = v["applied"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(ApplyResponse { applied }))
    }

    async fn promote(&self, req: Request<PromoteRequest>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        self.operate(r.rollout, Operation::Promote { full: r.full }, &by)
    }

    async fn pause(&self, req: Request<RolloutRef>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        self.operate(Some(req.into_inner()), Operation::Pause, &by)
    }

    async fn resume(&self, req: Request<RolloutRef>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        self.operate(Some(req.into_inner()), Operation::Resume, &by)
    }

    async fn abort(&self, req: Request<RolloutRef>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        self.operate(Some(req.into_inner()), Operation::Abort, &by)
    }

    async fn retry(&self, req: Request<RolloutRef>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        self.operate(Some(req.into_inner()), Operation::Retry, &by)
    }

    async fn undo(&self, req: Request<UndoRequest>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let to_revision = (r.to_revision > 0).then_some(r.to_revision);
        self.operate(r.rollout, Operation::Undo { to_revision }, &by)
    }

    async fn set_weight(
        &self,
        req: Request<SetWeightRequest>,
    ) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        self.operate(r.rollout, Operation::SetWeight(r.weight), &by)
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<RolloutView>, Status> {
        let by = self.caller(&req)?;
        let r = req.into_inner();
        let (ns, name) = reference(r.rollout)?;
        let form = crate::rollout_create::CreateRequest {
            name: name.clone(),
            namespace: ns.clone(),
            service: r.service,
            stable_labels: r.stable_labels.into_iter().collect(),
            canary_labels: r.canary_labels.into_iter().collect(),
            steps: r.steps,
            gateway: (!r.gateway.is_empty()).then_some(r.gateway),
        };
        release_api::create(&self.state, &form, &by).map_err(status)?;
        // The controller starts the release within a poll; answer with the view as it is.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v = release_api::get(&self.state, &ns, &name).map_err(status)?;
        Ok(Response::new(view(&v)))
    }
}
