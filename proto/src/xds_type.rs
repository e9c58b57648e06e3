//! The four xDS resource types Sluice serves and consumes, with their type URLs.

/// An xDS resource type, in the order a management server pushes them (Envoy's
/// make-before-break order: clusters, their endpoints, listeners, their routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl XdsType {
    /// Every type, in push order.
    pub const ALL: [XdsType; 4] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
    ];

    /// The protobuf message of the type.
    pub fn message(self) -> &'static str {
        match self {
            XdsType::Cluster => "envoy.config.cluster.v3.Cluster",
            XdsType::Endpoint => "envoy.config.endpoint.v3.ClusterLoadAssignment",
            XdsType::Listener => "envoy.config.listener.v3.Listener",
            XdsType::Route => "envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type URL used in discovery requests and responses.
    pub fn type_url(self) -> String {
        format!("type.googleapis.com/{}", self.message())
    }

    /// The type of a type URL.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        let name = url.rsplit('/').next()?;
        XdsType::ALL.into_iter().find(|t| t.message() == name)
    }

    /// Envoy's short name (CDS, EDS, LDS, RDS).
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
        }
    }

    /// Types whose requests name the resources they want (the others are wildcards).
    pub fn named(self) -> bool {
        matches!(self, XdsType::Endpoint | XdsType::Route)
    }

    /// The field that names a resource of this type.
    pub fn name_field(self) -> &'static str {
        match self {
            XdsType::Endpoint => "cluster_name",
            _ => "name",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for t in XdsType::ALL {
            assert_eq!(XdsType::from_type_url(&t.type_url()), Some(t));
        }
        assert_eq!(
            XdsType::from_type_url("type.googleapis.com/envoy.x.Secret"),
            None
        );
    }
}
