//! Checking a peer's certificate as Envoy's `CertificateValidationContext` does.
//!
//! - `trusted_ca`: the chain must lead to one of these roots.
//! - `match_typed_subject_alt_names`: at least one subject alternative name of the given type
//!   (DNS, URI, EMAIL, IP_ADDRESS) must match one of the matchers. The older
//!   `match_subject_alt_names` matches names of any of those four types.
//!
//! Upstream, Envoy does not compare the server name (`sni`) with the certificate, and with no
//! `trusted_ca` it accepts any certificate; Sluice does the same, so that a bootstrap routes the
//! same way in both. Downstream, the chain is checked by rustls's WebPKI client verifier and the
//! names by [`DownstreamVerifier`].

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore};
use rustls::{OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use sluice_config::FieldError;
use x509_parser::extensions::GeneralName;

use crate::matcher::{StringMatch, StringMatcher};

/// Which subject alternative names a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SanType {
    Dns,
    Uri,
    Email,
    Ip,
    /// `match_subject_alt_names`: DNS, URI, email or IP address.
    Any,
}

#[derive(Debug, Clone)]
struct SanMatcher {
    san_type: SanType,
    matcher: StringMatcher,
}

/// The subject-alternative-name matchers of a validation context; empty means no check.
#[derive(Debug, Clone, Default)]
pub struct SanMatchers(Vec<SanMatcher>);

/// A certificate whose names match none of the matchers.
#[derive(Debug, thiserror::Error)]
#[error("no subject alternative name of the peer certificate matches the configured matchers")]
struct SanMismatch;

/// A certificate whose extensions cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the peer certificate's subject alternative names: {0}")]
struct SanUnreadable(String);

impl SanMatchers {
    /// The matchers of `validation_context` (at `path`).
    pub fn from_config(validation: &Value, path: &str) -> Result<Self, FieldError> {
        let mut out = Vec::new();
        let list = |k: &str| {
            validation
                .get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for (i, m) in list("match_typed_subject_alt_names").iter().enumerate() {
            let mpath = format!("{path}.match_typed_subject_alt_names[{i}]");
            let san_type = match m.get("san_type").and_then(Value::as_str) {
                Some("DNS") => SanType::Dns,
                Some("URI") => SanType::Uri,
                Some("EMAIL") => SanType::Email,
                Some("IP_ADDRESS") => SanType::Ip,
                other => {
                    return Err(FieldError::new(
                        format!("{mpath}.san_type"),
                        format!(
                            "value {} not supported (DNS, URI, EMAIL or IP_ADDRESS)",
                            other.unwrap_or("SAN_TYPE_UNSPECIFIED")
                        ),
                    ))
                }
            };
            let matcher = string_matcher(m.get("matcher"), &format!("{mpath}.matcher"))?;
            out.push(SanMatcher { san_type, matcher });
        }
        for (i, m) in list("match_subject_alt_names").iter().enumerate() {
            let matcher = string_matcher(Some(m), &format!("{path}.match_subject_alt_names[{i}]"))?;
            out.push(SanMatcher {
                san_type: SanType::Any,
                matcher,
            });
        }
        Ok(SanMatchers(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Does one of `cert`'s subject alternative names match? Always true without matchers.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let unreadable = |e: String| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                SanUnreadable(e),
            ))))
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| unreadable(e.to_string()))?;
        let names = parsed
            .subject_alternative_name()
            .map_err(|e| unreadable(e.to_string()))?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let matched = names.iter().any(|name| {
            let (kind, value) = match name {
                GeneralName::DNSName(s) => (SanType::Dns, (*s).to_string()),
                GeneralName::URI(s) => (SanType::Uri, (*s).to_string()),
                GeneralName::RFC822Name(s) => (SanType::Email, (*s).to_string()),
                GeneralName::IPAddress(b) => match ip_string(b) {
                    Some(ip) => (SanType::Ip, ip),
                    None => return false,
                },
                _ => return false,
            };
            self.0.iter().any(|m| {
                (m.san_type == kind || m.san_type == SanType::Any)
                    && san_matches(&m.matcher, kind, &value)
            })
        });
        if matched {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(SanMismatch)),
            )))
        }
    }
}

fn string_matcher(v: Option<&Value>, path: &str) -> Result<StringMatcher, FieldError> {
    let Some(v) = v else {
        return Err(FieldError::new(path, "required"));
    };
    let mut errors = Vec::new();
    match crate::compile::string_matcher(v, path, &mut errors) {
        Some(m) => Ok(m),
        None => Err(errors
            .into_iter()
            .next()
            .unwrap_or_else(|| FieldError::new(path, "invalid matcher"))),
    }
}

/// An IP address SAN (4 or 16 bytes) in its usual text form.
fn ip_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        _ => None,
    }
}

/// Envoy compares a DNS name with an `exact` matcher as a host name: a wildcard SAN
/// `*.example.com` covers `api.example.com` (one label, case-insensitive).
fn san_matches(m: &StringMatcher, kind: SanType, value: &str) -> bool {
    if m.matches(value) {
        return true;
    }
    match (&m.kind, kind) {
        (StringMatch::Exact(want), SanType::Dns) => value.strip_prefix("*.").is_some_and(|base| {
            want.split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(base))
        }),
        _ => false,
    }
}

/// Upstream: the chain against `trusted_ca` when given, then the names; never the server name.
#[derive(Debug)]
pub struct UpstreamVerifier {
    roots: Option<Arc<RootCertStore>>,
    sans: SanMatchers,
    provider: Arc<CryptoProvider>,
}

impl UpstreamVerifier {
    pub fn new(
        roots: Option<Arc<RootCertStore>>,
        sans: SanMatchers,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        UpstreamVerifier {
            roots,
            sans,
            provider,
        }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        self.sans.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Downstream (mTLS): rustls's WebPKI client verifier for the chain, then the names.
#[derive(Debug)]
pub struct DownstreamVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: SanMatchers,
}

impl DownstreamVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, sans: SanMatchers) -> Self {
        DownstreamVerifier { inner, sans }
    }
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.sans.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            let san = if let Some(uri) = n.strip_prefix("uri:") {
                rcgen::SanType::URI(uri.try_into().unwrap())
            } else if let Some(mail) = n.strip_prefix("email:") {
                rcgen::SanType::Rfc822Name(mail.try_into().unwrap())
            } else if let Ok(ip) = n.parse::<IpAddr>() {
                rcgen::SanType::IpAddress(ip)
            } else {
                rcgen::SanType::DnsName((*n).try_into().unwrap())
            };
            params.subject_alt_names.push(san);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn matchers(v: Value) -> SanMatchers {
        SanMatchers::from_config(&v, "vc").unwrap()
    }

    #[test]
    fn typed_matchers_look_only_at_their_type() {
        let c = cert(&["backend.internal", "uri:spiffe://cluster.local/ns/a/sa/b"]);
        let uri = matchers(json!({"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]}));
        assert!(uri.check(&c).is_ok());
        let dns_as_uri = matchers(json!({"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "backend.internal"}}]}));
        assert!(dns_as_uri.check(&c).is_err());
        let dns = matchers(json!({"match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "BACKEND.internal", "ignore_case": true}}]}));
        assert!(dns.check(&c).is_ok());
    }

    #[test]
    fn legacy_matchers_look_at_every_type() {
        let c = cert(&["10.1.2.3", "email:ops@example.com"]);
        let ip = matchers(json!({"match_subject_alt_names": [{"exact": "10.1.2.3"}]}));
        assert!(ip.check(&c).is_ok());
        let mail = matchers(json!({"match_subject_alt_names": [{"suffix": "@example.com"}]}));
        assert!(mail.check(&c).is_ok());
        let none = matchers(json!({"match_subject_alt_names": [{"exact": "10.1.2.4"}]}));
        assert!(none.check(&c).is_err());
    }

    #[test]
    fn an_exact_dns_matcher_is_covered_by_a_wildcard_name() {
        let c = cert(&["*.example.com"]);
        let m = |want: &str| {
            matchers(json!({"match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": want}}]}))
            .check(&c)
            .is_ok()
        };
        assert!(m("api.example.com"));
        assert!(!m("a.b.example.com"), "a wildcard covers one label");
        assert!(!m("example.com"));
    }

    #[test]
    fn no_matchers_accept_any_certificate_and_bad_types_are_named() {
        assert!(SanMatchers::default().check(&cert(&[])).is_ok());
        let err = SanMatchers::from_config(
            &json!({"match_typed_subject_alt_names": [{"san_type": "OTHER_NAME", "matcher": {"exact": "x"}}]}),
            "vc",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("vc.match_typed_subject_alt_names[0].san_type"),
            "{err}"
        );
    }
}
