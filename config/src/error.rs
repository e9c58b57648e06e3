//! Error types for configuration reading and validation.

use std::fmt;
use std::path::PathBuf;

/// One problem with one field, named by its full path in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `static_resources.listeners[0].address`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
    /// 1-based line of the field in the source file, when it could be located.
    pub line: Option<usize>,
}

impl FieldError {
    /// A field error without a known line.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: reason.into(),
            line: None,
        }
    }

    /// The same error for a field nested under `prefix` (a list item, an enclosing message).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = match (prefix.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => prefix.to_string(),
            (false, false) if self.path.starts_with('[') => format!("{prefix}{}", self.path),
            (false, false) => format!("{prefix}.{}", self.path),
        };
        self
    }

    /// The standard "not supported" error for a field that is set but not implemented.
    pub fn unsupported(path: impl Into<String>) -> Self {
        FieldError::new(path, "not supported")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Why a configuration document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML or JSON.
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Syntax {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    /// The document parsed but does not fit the schema (unknown field, wrong type, bad enum value).
    #[error("{origin}: {message}")]
    Schema { origin: String, message: String },
    /// One or more fields are invalid or unsupported.
    #[error("{}", format_fields(origin, errors))]
    Invalid {
        origin: String,
        errors: Vec<FieldError>,
    },
    /// The embedded descriptor set could not be loaded (a build defect).
    #[error(transparent)]
    Descriptors(#[from] sluice_proto::DescriptorError),
}

fn format_fields(origin: &str, errors: &[FieldError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match e.line {
            Some(line) => out.push_str(&format!("{origin}:{line}: {e}")),
            None => out.push_str(&format!("{origin}: {e}")),
        }
    }
    out
}

impl ConfigError {
    /// The field errors, when this is a validation failure.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}
