//! The resources a proxy has accepted over xDS, and how they join the bootstrap.
//!
//! The proxy compiles one configuration: the bootstrap's `static_resources` plus the dynamic
//! clusters (CDS) with their endpoints (EDS), and the dynamic listeners (LDS) with their route
//! configurations (RDS) put inline. [`XdsState::merged`] builds that bootstrap, warming as Envoy
//! does: a cluster waits for its endpoints and a listener for its route configurations; until
//! then the version that was serving keeps serving (or, for a new resource, it is not served
//! yet). The result goes through the same compile step as a static file, so a resource is
//! accepted or refused for the same reasons either way.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

pub use sluice_proto::xds_type::XdsType as XdsKind;

/// The name of a resource (canonical JSON): `name`, or `cluster_name` for endpoints.
pub fn name_of(kind: XdsKind, v: &Value) -> String {
    v.get(kind.name_field())
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The accepted resources of one type, and the version they came with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    pub version: String,
    pub resources: BTreeMap<String, Value>,
}

/// Everything accepted over xDS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsState {
    pub types: BTreeMap<XdsKind, TypeResources>,
}

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn type_name(v: &Value) -> &str {
    v.get("@type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
}

/// The RDS names a listener's connection managers use.
pub fn listener_rds_names(listener: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for chain in listener
        .get("filter_chains")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for f in chain
            .get("filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(tc) = f.get("typed_config") else {
                continue;
            };
            if type_name(tc) != HCM {
                continue;
            }
            if let Some(n) = tc
                .get("rds")
                .and_then(|r| r.get("route_config_name"))
                .and_then(Value::as_str)
            {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// The EDS service name of a cluster, when it is an EDS cluster.
pub fn cluster_eds_name(cluster: &Value) -> Option<String> {
    if cluster.get("type").and_then(Value::as_str) != Some("EDS") {
        return None;
    }
    let name = cluster
        .get("eds_cluster_config")
        .and_then(|e| e.get("service_name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| cluster.get("name").and_then(Value::as_str))?;
    Some(name.to_string())
}

fn static_list<'a>(bootstrap: &'a Value, key: &str) -> &'a [Value] {
    bootstrap
        .get("static_resources")
        .and_then(|s| s.get(key))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

impl XdsState {
    /// The resources of a type.
    pub fn of(&self, kind: XdsKind) -> Option<&TypeResources> {
        self.types.get(&kind)
    }

    /// The names to subscribe to for EDS (from EDS clusters) and RDS (from listeners, dynamic
    /// and static).
    pub fn wanted(&self, kind: XdsKind, bootstrap: &Value) -> BTreeSet<String> {
        match kind {
            XdsKind::Endpoint => self
                .of(XdsKind::Cluster)
                .into_iter()
                .flat_map(|t| t.resources.values())
                .chain(static_list(bootstrap, "clusters"))
                .filter_map(cluster_eds_name)
                .collect(),
            XdsKind::Route => self
                .of(XdsKind::Listener)
                .into_iter()
                .flat_map(|t| t.resources.values())
                .chain(static_list(bootstrap, "listeners"))
                .flat_map(listener_rds_names)
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// An EDS cluster with its endpoints put in, ready for the compiler; `None` while its
    /// endpoints have not arrived.
    fn warm_cluster(&self, c: &Value) -> Option<Value> {
        let Some(eds) = cluster_eds_name(c) else {
            return Some(c.clone());
        };
        let cla = self.of(XdsKind::Endpoint)?.resources.get(&eds)?;
        let mut out = c.as_object()?.clone();
        out.remove("eds_cluster_config");
        out.insert("type".into(), json!("STATIC"));
        let mut la = cla.clone();
        if let Some(m) = la.as_object_mut() {
            m.insert(
                "cluster_name".into(),
                c.get("name").cloned().unwrap_or(Value::Null),
            );
            // Envoy's EDS-only fields that do not concern endpoint choice.
            m.remove("policy");
            m.remove("named_endpoints");
        }
        out.insert("load_assignment".into(), la);
        Some(Value::Object(out))
    }

    /// A listener with its RDS route configurations put inline; `None` while one is missing.
    fn warm_listener(&self, l: &Value) -> Option<Value> {
        let names = listener_rds_names(l);
        if names.is_empty() {
            return Some(l.clone());
        }
        let routes = &self.of(XdsKind::Route)?.resources;
        let mut out = l.clone();
        for chain in out.get_mut("filter_chains")?.as_array_mut()? {
            let Some(filters) = chain.get_mut("filters").and_then(Value::as_array_mut) else {
                continue;
            };
            for f in filters {
                let Some(tc) = f.get_mut("typed_config").and_then(Value::as_object_mut) else {
                    continue;
                };
                let Some(rds) = tc.remove("rds") else {
                    continue;
                };
                let name = rds
                    .get("route_config_name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut rc = routes.get(name)?.clone();
                if let Some(m) = rc.as_object_mut() {
                    // RDS route configurations default to not validating cluster names.
                    m.entry("validate_clusters").or_insert(json!(false));
                }
                tc.insert("route_config".into(), rc);
            }
        }
        Some(out)
    }

    /// The bootstrap to compile: `bootstrap` with the dynamic resources joined in. A resource
    /// that is not warm keeps its version from `previous` (the last merged bootstrap), if any.
    pub fn merged(&self, bootstrap: &Value, previous: Option<&Value>) -> Value {
        let prev = |key: &str| previous.map(|p| static_list(p, key)).unwrap_or(&[]);
        let mut clusters: Vec<Value> = Vec::new();
        let mut seen = BTreeSet::new();
        for c in static_list(bootstrap, "clusters") {
            let name = name_of(XdsKind::Cluster, c);
            seen.insert(name.clone());
            match self
                .warm_cluster(c)
                .or_else(|| named(prev("clusters"), &name).cloned())
            {
                Some(w) => clusters.push(w),
                None => clusters.push(c.clone()),
            }
        }
        if let Some(t) = self.of(XdsKind::Cluster) {
            for (name, c) in &t.resources {
                if !seen.insert(name.clone()) {
                    continue; // a static cluster of the same name wins, as in Envoy
                }
                if let Some(w) = self
                    .warm_cluster(c)
                    .or_else(|| named(prev("clusters"), name).cloned())
                {
                    clusters.push(w);
                }
            }
        }
        let mut listeners: Vec<Value> = Vec::new();
        let mut seen = BTreeSet::new();
        let dynamic = self
            .of(XdsKind::Listener)
            .map(|t| t.resources.values().collect::<Vec<_>>());
        for l in static_list(bootstrap, "listeners")
            .iter()
            .chain(dynamic.into_iter().flatten())
        {
            let name = name_of(XdsKind::Listener, l);
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(w) = self
                .warm_listener(l)
                .or_else(|| named(prev("listeners"), &name).cloned())
            {
                listeners.push(w);
            }
        }
        let mut out = bootstrap.as_object().cloned().unwrap_or_default();
        let mut sr = Map::new();
        sr.insert("clusters".into(), Value::Array(clusters));
        sr.insert("listeners".into(), Value::Array(listeners));
        out.insert("static_resources".into(), Value::Object(sr));
        Value::Object(out)
    }

    /// Envoy-style dynamic config dumps of what was accepted, for `/config_dump`.
    pub fn dump(&self) -> Value {
        let section = |kind: XdsKind, dump_type: &str, list: &str, item: &str| {
            let t = self.of(kind).cloned().unwrap_or_default();
            let items: Vec<Value> = t
                .resources
                .values()
                .map(|r| json!({"version_info": t.version, item: r}))
                .collect();
            json!({"@type": format!("type.googleapis.com/envoy.admin.v3.{dump_type}"), "version_info": t.version, list: items})
        };
        json!([
            section(
                XdsKind::Cluster,
                "ClustersConfigDump",
                "dynamic_active_clusters",
                "cluster"
            ),
            section(
                XdsKind::Endpoint,
                "EndpointsConfigDump",
                "dynamic_endpoint_configs",
                "endpoint_config"
            ),
            section(
                XdsKind::Listener,
                "ListenersConfigDump",
                "dynamic_listeners",
                "listener"
            ),
            section(
                XdsKind::Route,
                "RoutesConfigDump",
                "dynamic_route_configs",
                "route_config"
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(kind: XdsKind, items: Vec<Value>) -> TypeResources {
        TypeResources {
            version: "1".into(),
            resources: items.into_iter().map(|v| (name_of(kind, &v), v)).collect(),
        }
    }

    fn eds_cluster(name: &str) -> Value {
        json!({"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}})
    }

    fn listener(rds: &str) -> Value {
        json!({"name": "l", "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": format!("type.googleapis.com/{HCM}"),
            "rds": {"route_config_name": rds, "config_source": {"ads": {}}}}}]}]})
    }

    #[test]
    fn clusters_wait_for_endpoints_and_listeners_for_routes() {
        let base = json!({"static_resources": {"clusters": [{"name": "xds"}]}});
        let mut s = XdsState::default();
        s.types.insert(
            XdsKind::Cluster,
            state(XdsKind::Cluster, vec![eds_cluster("a")]),
        );
        s.types.insert(
            XdsKind::Listener,
            state(XdsKind::Listener, vec![listener("r1")]),
        );
        assert_eq!(s.wanted(XdsKind::Endpoint, &base), ["a".to_string()].into());
        assert_eq!(s.wanted(XdsKind::Route, &base), ["r1".to_string()].into());
        let m = s.merged(&base, None);
        assert_eq!(
            m["static_resources"]["clusters"].as_array().unwrap().len(),
            1,
            "a is warming"
        );
        assert!(
            m["static_resources"]["listeners"]
                .as_array()
                .unwrap()
                .is_empty(),
            "l is warming"
        );

        s.types.insert(
            XdsKind::Endpoint,
            state(
                XdsKind::Endpoint,
                vec![json!({"cluster_name": "a", "endpoints": []})],
            ),
        );
        s.types.insert(
            XdsKind::Route,
            state(
                XdsKind::Route,
                vec![json!({"name": "r1", "virtual_hosts": []})],
            ),
        );
        let m = s.merged(&base, None);
        let a = &m["static_resources"]["clusters"][1];
        assert_eq!(a["type"], "STATIC");
        assert_eq!(a["load_assignment"]["cluster_name"], "a");
        let hcm = &m["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert!(hcm.get("rds").is_none());
        assert_eq!(hcm["route_config"]["validate_clusters"], false);

        // The listener now wants a route configuration that has not arrived: the previous
        // merged version keeps serving.
        s.types.insert(
            XdsKind::Listener,
            state(XdsKind::Listener, vec![listener("r2")]),
        );
        let m2 = s.merged(&base, Some(&m));
        assert_eq!(
            m2["static_resources"]["listeners"][0],
            m["static_resources"]["listeners"][0]
        );
    }
}
