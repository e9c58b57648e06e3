//! Reading Envoy v3 messages from YAML/JSON documents.
//!
//! A document is deserialized into a [`DynamicMessage`] of the requested Envoy type with protobuf's
//! JSON mapping (Envoy's own rules: either field-name spelling, `"1.5s"` durations, enum names,
//! `"@type"` in `Any`, unknown fields rejected), checked by [`field_support`], then written out as
//! canonical proto JSON (proto field names, defaults omitted, `Any` expanded), which is the form
//! Sluice compiles from, whether the message came from a file or (later) from xDS.

use std::path::Path;

use prost_reflect::DynamicMessage;
use serde_json::Value;

use crate::error::{ConfigError, FieldError};
use crate::field_support::check_message;
use crate::source::{self, snake_case, Document};

/// Full protobuf name of the bootstrap message.
pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";
/// Full protobuf name of a route configuration.
pub const ROUTE_CONFIGURATION: &str = "envoy.config.route.v3.RouteConfiguration";

/// A bootstrap read from a file, with the document it came from.
#[derive(Debug, Clone)]
pub struct LoadedBootstrap {
    /// The source document (for line numbers).
    pub document: Document,
    /// The validated bootstrap as canonical proto JSON: proto field names, defaults omitted,
    /// `Any` payloads expanded with `"@type"`. Sluice compiles from this form, whatever the source.
    pub canonical: Value,
}

/// Read a file's text.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Read and validate a bootstrap file (YAML or JSON).
pub fn load_bootstrap_file(path: &Path) -> Result<LoadedBootstrap, ConfigError> {
    let text = read_file(path)?;
    load_bootstrap_text(&path.display().to_string(), &text)
}

/// Read and validate a bootstrap from text.
pub fn load_bootstrap_text(origin: &str, text: &str) -> Result<LoadedBootstrap, ConfigError> {
    let document = source::parse_document(origin, text)?;
    let canonical = checked_canonical(&document, BOOTSTRAP, &document.value, "")?;
    Ok(LoadedBootstrap {
        document,
        canonical,
    })
}

/// Deserialize `value` (found at path `at` of `document`) as `full_name`, check that Sluice
/// supports every field set in it, and return its canonical JSON.
pub fn checked_canonical(
    document: &Document,
    full_name: &str,
    value: &Value,
    at: &str,
) -> Result<Value, ConfigError> {
    let dynamic = dynamic_from_json(document, full_name, value, at)?;
    let mut errors = Vec::new();
    check_message(&dynamic, at, &mut errors);
    if !errors.is_empty() {
        document.locate(&mut errors);
        return Err(ConfigError::Invalid {
            origin: document.origin.clone(),
            errors,
        });
    }
    canonical_json(&dynamic).map_err(|message| ConfigError::Schema {
        origin: document.origin.clone(),
        message,
    })
}

/// Deserialize a JSON tree as a dynamic message of type `full_name`.
/// `at` is the path of `value` within `document`, so that errors name the full path and line.
pub fn dynamic_from_json(
    document: &Document,
    full_name: &str,
    value: &Value,
    at: &str,
) -> Result<DynamicMessage, ConfigError> {
    let pool = sluice_proto::descriptor_pool()?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| ConfigError::Schema {
            origin: document.origin.clone(),
            message: format!("unknown message type {full_name}"),
        })?;
    let mut value = value.clone();
    relax_to_schema(&mut value, &desc);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&value, &mut track);
    DynamicMessage::deserialize(desc, de).map_err(|e| {
        let path = normalise_path(&track.path().to_string());
        let path = if path == "." { String::new() } else { path };
        let mut errors = vec![FieldError::new(path, e.to_string()).under(at)];
        document.locate(&mut errors);
        ConfigError::Invalid {
            origin: document.origin.clone(),
            errors,
        }
    })
}

/// Envoy's JSON parsing is more lenient than proto3 JSON in two ways, followed here by walking
/// the message schema: a single value where a repeated field expects a list
/// (`filters: {name: ...}`) becomes a one-element list, and enum names match case-insensitively
/// (`lb_policy: round_robin`) and are rewritten to their canonical spelling.
fn relax_to_schema(value: &mut Value, desc: &prost_reflect::MessageDescriptor) {
    let Value::Object(map) = value else {
        return;
    };
    if desc.full_name() == "google.protobuf.Any" {
        let type_name = map
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|t| t.rsplit('/').next())
            .map(str::to_string);
        if let Some(inner) = type_name.and_then(|t| desc.parent_pool().get_message_by_name(&t)) {
            relax_to_schema(value, &inner);
        }
        return;
    }
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    for (key, child) in map.iter_mut() {
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key));
        let Some(field) = field else { continue };
        if field.is_list() && !child.is_array() && !child.is_null() {
            *child = Value::Array(vec![child.take()]);
        }
        if let Some(en) = field.kind().as_enum() {
            match child {
                Value::Array(items) => items.iter_mut().for_each(|i| canonical_enum_name(i, en)),
                other => canonical_enum_name(other, en),
            }
            continue;
        }
        let Some(msg) = field.kind().as_message().cloned() else {
            continue;
        };
        if field.is_map() {
            let value_kind = msg.map_entry_value_field().kind();
            if let (Some(vmsg), Value::Object(entries)) = (value_kind.as_message(), child) {
                for v in entries.values_mut() {
                    relax_to_schema(v, vmsg);
                }
            }
        } else if let Value::Array(items) = child {
            for item in items {
                relax_to_schema(item, &msg);
            }
        } else {
            relax_to_schema(child, &msg);
        }
    }
}

/// An enum name in another case (`round_robin`) → the declared name (`ROUND_ROBIN`). Names that
/// match no value in any case are left for the parser to reject.
fn canonical_enum_name(value: &mut Value, en: &prost_reflect::EnumDescriptor) {
    let Value::String(name) = value else { return };
    if en.get_value_by_name(name).is_some() {
        return;
    }
    if let Some(v) = en.values().find(|v| v.name().eq_ignore_ascii_case(name)) {
        *name = v.name().to_string();
    }
}

/// serde_path_to_error paths as written (`staticResources.listeners[0]`) to snake_case paths.
fn normalise_path(path: &str) -> String {
    path.split('.')
        .map(|seg| match seg.find('[') {
            Some(i) => format!("{}{}", snake_case(&seg[..i]), &seg[i..]),
            None => snake_case(seg),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Canonical proto JSON of a message: proto field names, defaults omitted, `Any` expanded.
pub fn canonical_json(msg: &DynamicMessage) -> Result<Value, String> {
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

/// Decode a binary resource (received over xDS) as `full_name` and check field support.
fn checked_resource(full_name: &str, bytes: &[u8]) -> Result<DynamicMessage, Vec<FieldError>> {
    let one = |reason: String| vec![FieldError::new("", reason)];
    let pool = sluice_proto::descriptor_pool().map_err(|e| one(e.to_string()))?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| one(format!("unknown message type {full_name}")))?;
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| one(e.to_string()))?;
    let mut errors = Vec::new();
    check_message(&dynamic, "", &mut errors);
    if errors.is_empty() {
        Ok(dynamic)
    } else {
        Err(errors)
    }
}

/// Validate a binary resource (xDS) and return its canonical JSON, ready for compilation.
pub fn canonical_resource(full_name: &str, bytes: &[u8]) -> Result<Value, Vec<FieldError>> {
    let dynamic = checked_resource(full_name, bytes)?;
    canonical_json(&dynamic).map_err(|e| vec![FieldError::new("", e)])
}

/// The name of a binary resource (its `name`, or `cluster_name` for endpoints), read without
/// validation, so that a rejected resource can still be named.
pub fn resource_name(full_name: &str, bytes: &[u8]) -> Option<String> {
    let pool = sluice_proto::descriptor_pool().ok()?;
    let desc = pool.get_message_by_name(full_name)?;
    let msg = DynamicMessage::decode(desc, bytes).ok()?;
    let field = ["name", "cluster_name"]
        .into_iter()
        .find_map(|f| msg.get_field_by_name(f))?;
    field.as_str().map(str::to_string)
}

/// What kind of Envoy document a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// A bootstrap (the default).
    Bootstrap,
    /// One route configuration (a top-level `virtual_hosts`).
    RouteConfiguration,
    /// A list of route configurations.
    RouteConfigurationList,
    /// An xDS resources file (`resources:` of `"@type"`-tagged messages).
    Resources,
}

/// Guess the kind of an Envoy document from its top-level shape.
pub fn document_kind(value: &Value) -> DocumentKind {
    match value {
        Value::Array(_) => DocumentKind::RouteConfigurationList,
        Value::Object(m) if m.contains_key("resources") => DocumentKind::Resources,
        Value::Object(m) if m.contains_key("virtual_hosts") || m.contains_key("virtualHosts") => {
            DocumentKind::RouteConfiguration
        }
        _ => DocumentKind::Bootstrap,
    }
}

/// A validated Envoy document: its kind, and each message in it as canonical JSON with its path.
#[derive(Debug, Clone)]
pub struct ValidatedDocument {
    pub document: Document,
    pub kind: DocumentKind,
    /// `(path in the document, canonical JSON)`: one bootstrap or route configuration, or one
    /// entry per list item / xDS resource.
    pub items: Vec<(String, Value)>,
}

/// Validate any Envoy document (bootstrap, route configuration(s), xDS resource file): every
/// message in it must deserialize and use only fields Sluice supports.
pub fn validate_text(origin: &str, text: &str) -> Result<ValidatedDocument, ConfigError> {
    let document = source::parse_document(origin, text)?;
    let kind = document_kind(&document.value);
    let items: Vec<(String, &str, &Value)> = match (&kind, &document.value) {
        (DocumentKind::Bootstrap, v) => vec![(String::new(), BOOTSTRAP, v)],
        (DocumentKind::RouteConfiguration, v) => vec![(String::new(), ROUTE_CONFIGURATION, v)],
        (DocumentKind::RouteConfigurationList, Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), ROUTE_CONFIGURATION, v))
            .collect(),
        (DocumentKind::Resources, v) => v
            .get("resources")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, v)| (format!("resources[{i}]"), "google.protobuf.Any", v))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut canonical = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (at, full_name, value) in items {
        match checked_canonical(&document, full_name, value, &at) {
            Ok(c) => canonical.push((at, c)),
            Err(ConfigError::Invalid { errors: e, .. }) => errors.extend(e),
            Err(other) => return Err(other),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid {
            origin: document.origin.clone(),
            errors,
        });
    }
    Ok(ValidatedDocument {
        document,
        kind,
        items: canonical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
static_resources:
  listeners:
  - name: main
    address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a, timeout: 1.5s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: a
    type: STATIC
    connect_timeout: 0.25s
    lbPolicy: ROUND_ROBIN
    load_assignment:
      cluster_name: a
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8080 }
"#;

    #[test]
    fn minimal_bootstrap_loads() {
        let b = load_bootstrap_text("t.yaml", MINIMAL).unwrap().canonical;
        let sr = &b["static_resources"];
        assert_eq!(sr["listeners"].as_array().unwrap().len(), 1);
        assert_eq!(sr["clusters"][0]["name"], "a");
    }

    #[test]
    fn canonical_form_uses_proto_names_and_expands_any() {
        let c = load_bootstrap_text("t.yaml", MINIMAL).unwrap().canonical;
        let cluster = &c["static_resources"]["clusters"][0];
        assert!(cluster.get("lb_policy").is_none(), "defaults are omitted");
        assert_eq!(cluster["connect_timeout"], "0.250s");
        let hcm = &c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert!(hcm["@type"]
            .as_str()
            .unwrap()
            .ends_with("HttpConnectionManager"));
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
            "1.500s"
        );
    }

    #[test]
    fn unsupported_field_is_named_with_its_path_and_line() {
        let text = MINIMAL.replace(
            "route: { cluster: a, timeout: 1.5s }",
            "route: { cluster: a, timeout: 1.5s, max_stream_duration: {} }",
        );
        let err = load_bootstrap_text("t.yaml", &text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t.yaml:19: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.max_stream_duration: not supported"),
            "{msg}"
        );
    }

    #[test]
    fn a_single_value_is_accepted_for_a_list_as_envoy_does() {
        let text = MINIMAL.replace(
            "    - filters:\n      - name: envoy.filters.network.http_connection_manager",
            "    - filters:\n        name: envoy.filters.network.http_connection_manager",
        );
        let b = load_bootstrap_text("t.yaml", &text);
        assert!(b.is_ok(), "{:?}", b.err().map(|e| e.to_string()));
    }

    #[test]
    fn enum_names_match_in_any_case_as_envoy_does() {
        let text = MINIMAL
            .replace("lbPolicy: ROUND_ROBIN", "lbPolicy: least_request")
            .replace("type: STATIC", "type: Static");
        let c = load_bootstrap_text("t.yaml", &text).unwrap().canonical;
        let cluster = &c["static_resources"]["clusters"][0];
        assert_eq!(cluster["lb_policy"], "LEAST_REQUEST");
        assert_eq!(cluster["type"], "STATIC", "{cluster}");
        let text = MINIMAL.replace("lbPolicy: ROUND_ROBIN", "lbPolicy: roundrobin");
        let err = load_bootstrap_text("t.yaml", &text).unwrap_err();
        assert!(err.to_string().contains("roundrobin"), "{err}");
    }

    #[test]
    fn unknown_field_is_a_schema_error_with_path() {
        let text = MINIMAL.replace(
            "lbPolicy: ROUND_ROBIN",
            "lbPolicy: ROUND_ROBIN\n    bogus_field: 1",
        );
        let err = load_bootstrap_text("t.yaml", &text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("static_resources.clusters[0]"), "{msg}");
        assert!(msg.contains("bogus_field"), "{msg}");
    }

    #[test]
    fn unsupported_enum_value_is_named() {
        let text = MINIMAL.replace("lbPolicy: ROUND_ROBIN", "lbPolicy: CLUSTER_PROVIDED");
        let err = load_bootstrap_text("t.yaml", &text).unwrap_err();
        assert!(
            err.to_string().contains(
                "static_resources.clusters[0].lb_policy: value CLUSTER_PROVIDED not supported"
            ),
            "{err}"
        );
    }

    #[test]
    fn unsupported_extension_type_is_named() {
        let text = MINIMAL.replace(
            "          - name: envoy.filters.http.router\n",
            "          - name: envoy.filters.http.lua\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\n          - name: envoy.filters.http.router\n",
        );
        let err = load_bootstrap_text("t.yaml", &text).unwrap_err();
        assert!(
            err.to_string().contains("http_filters[0].typed_config: type envoy.extensions.filters.http.lua.v3.Lua not supported"),
            "{err}"
        );
    }
}
