//! Reading configuration text (YAML 1.2 or JSON) into a JSON tree, remembering where each field was.
//!
//! JSON is a subset of YAML, so one parser reads both. While the tree is built, the line of every
//! mapping key and sequence item is recorded under its path, with keys normalised to `snake_case`,
//! so that an error found later on `listeners[0].filter_chains` can be reported as `file:12`
//! whether the file spelled it `filter_chains` or `filterChains`.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::ConfigError;

/// One parsed document, with the line of each field path.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where the text came from (a file path, or a description such as `xds:RDS`).
    pub origin: String,
    /// The document as a JSON tree.
    pub value: Value,
    lines: HashMap<String, usize>,
}

impl Document {
    /// A document built from a JSON tree that has no source text (lines unknown).
    pub fn from_value(origin: impl Into<String>, value: Value) -> Self {
        Document {
            origin: origin.into(),
            value,
            lines: HashMap::new(),
        }
    }

    /// The 1-based line of `path`, or of the nearest enclosing field that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Set the line of every error from this document's line table.
    pub fn locate(&self, errors: &mut [crate::FieldError]) {
        for e in errors {
            if e.line.is_none() {
                e.line = self.line_of(&e.path);
            }
        }
    }
}

/// `lowerCamelCase` to `snake_case` (already-snake names are unchanged).
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse exactly one document (a file with several documents is an error).
pub fn parse_document(origin: &str, text: &str) -> Result<Document, ConfigError> {
    let mut docs = parse_documents(origin, text)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(ConfigError::Syntax {
            origin: origin.to_string(),
            line: None,
            message: "empty document".into(),
        }),
        n => Err(ConfigError::Syntax {
            origin: origin.to_string(),
            line: None,
            message: format!("expected one document, found {n}"),
        }),
    }
}

/// Parse every document of a (possibly multi-document) YAML stream. Empty documents are skipped.
pub fn parse_documents(origin: &str, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            line: Some(e.marker().line()),
            message: e.info().to_string(),
        })?;
    if let Some(message) = builder.error {
        return Err(ConfigError::Syntax {
            origin: origin.to_string(),
            line: builder.error_line,
            message,
        });
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|(v, _)| !v.is_null())
        .map(|(value, lines)| Document {
            origin: origin.to_string(),
            value,
            lines,
        })
        .collect())
}

enum Frame {
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        path: String,
        anchor: usize,
    },
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
    },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    docs: Vec<(Value, HashMap<String, usize>)>,
    lines: HashMap<String, usize>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    error: Option<String>,
    error_line: Option<usize>,
}

impl TreeBuilder {
    /// Path of the value about to be inserted into the top frame.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { key, path, .. }) => join(path, key.as_deref().unwrap_or("")),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
        }
    }

    fn fail(&mut self, message: String, mark: Marker) {
        if self.error.is_none() {
            self.error = Some(message);
            self.error_line = Some(mark.line());
        }
    }

    fn insert(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        let new_key = match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                return;
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                return;
            }
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                    return;
                }
                None => match value {
                    // A value in key position: only scalars may be keys.
                    Value::String(s) => Ok((map.contains_key(&s), s)),
                    Value::Number(n) => Ok((false, n.to_string())),
                    Value::Bool(b) => Ok((false, b.to_string())),
                    Value::Null => Ok((false, String::new())),
                    _ => Err(()),
                },
            },
        };
        match new_key {
            Err(()) => self.fail("mapping keys must be scalars".into(), mark),
            Ok((true, k)) => self.fail(format!("duplicate key `{k}`"), mark),
            Ok((false, k)) => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some(k);
                }
                let path = self.child_path();
                self.lines.insert(path, mark.line());
            }
        }
    }

    fn in_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

fn join(path: &str, key: &str) -> String {
    let key = snake_case(key);
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::Number(u.into());
    }
    let looks_numeric = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

fn tag_is_str(tag: &Option<Tag>) -> bool {
    matches!(tag, Some(t) if t.suffix == "str")
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.lines.clear();
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let root = self.root.take().unwrap_or(Value::Null);
                let lines = std::mem::take(&mut self.lines);
                self.docs.push((root, lines));
            }
            Event::Scalar(s, style, anchor, tag) => {
                let value = if style == TScalarStyle::Plain && !tag_is_str(&tag) {
                    resolve_plain(&s)
                } else {
                    Value::String(s)
                };
                if !self.in_key_position() {
                    let path = self.child_path();
                    if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
                        self.lines.insert(path, mark.line());
                    }
                }
                self.insert(value, anchor, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => self.insert(v, 0, mark),
                None => self.fail(format!("unknown alias {id}"), mark),
            },
            Event::SequenceStart(anchor, _) => {
                let path = self.child_path();
                if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
                    self.lines.insert(path.clone(), mark.line());
                }
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let path = self.child_path();
                if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
                    self.lines.insert(path.clone(), mark.line());
                }
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    key: None,
                    path,
                    anchor,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    self.insert(Value::Array(items), anchor, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, .. }) = self.stack.pop() {
                    self.insert(Value::Object(map), anchor, mark);
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_tree() {
        let y = parse_document("a.yaml", "a:\n  b: [1, \"2\", true]\n  c: 1.5s\n").unwrap();
        let j = parse_document("a.json", r#"{"a": {"b": [1, "2", true], "c": "1.5s"}}"#).unwrap();
        assert_eq!(y.value, j.value);
    }

    #[test]
    fn lines_are_recorded_under_snake_case_paths() {
        let text = "staticResources:\n  listeners:\n  - name: a\n    filterChains:\n    - filters: []\n  - name: b\n";
        let d = parse_document("x.yaml", text).unwrap();
        assert_eq!(d.line_of("static_resources"), Some(1));
        assert_eq!(
            d.line_of("static_resources.listeners[0].filter_chains"),
            Some(4)
        );
        assert_eq!(d.line_of("static_resources.listeners[1]"), Some(6));
        assert_eq!(d.line_of("static_resources.listeners[1].name"), Some(6));
        assert_eq!(
            d.line_of("static_resources.listeners[0].filter_chains[0].filters"),
            Some(5)
        );
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse_document("bad.yaml", "a: 1\nb: [1, 2\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: Some(_), .. }),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse_document("dup.yaml", "a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("duplicate key `a`"), "{err}");
    }

    #[test]
    fn multi_document_streams() {
        let docs = parse_documents("m.yaml", "a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let d = parse_document("q.yaml", "a: '10'\nb: 10\nc: !!str 5\n").unwrap();
        assert_eq!(d.value["a"], Value::String("10".into()));
        assert_eq!(d.value["b"], Value::Number(10.into()));
        assert_eq!(d.value["c"], Value::String("5".into()));
    }
}
