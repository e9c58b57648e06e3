//! TLS with rustls: downstream (`DownstreamTlsContext` on a filter chain, chosen by SNI) and
//! upstream (`UpstreamTlsContext` on a cluster).
//!
//! Certificates and keys are PEM, from files or inline; they are read when the configuration is
//! compiled, so SIGHUP reloads them and a bad file keeps the last good configuration serving.
//! Supported: `tls_certificates`, `alpn_protocols`, `tls_params` minimum/maximum version (TLS 1.2,
//! 1.3), `validation_context.trusted_ca` with `require_client_certificate` (mTLS),
//! `validation_context.match_typed_subject_alt_names` / `match_subject_alt_names`, and the
//! upstream `sni`. Peer certificates are checked as Envoy checks them ([`crate::peer_validation`]):
//! upstream, against `trusted_ca` when one is given and never against the server name.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use sluice_config::FieldError;

use crate::data_source;
use crate::peer_validation::{DownstreamVerifier, SanMatchers, UpstreamVerifier};

const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn type_of(v: &Value) -> &str {
    v.get("@type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
}

/// The typed config of a `transport_socket`, checked to be of `expected` type.
fn tls_context<'a>(socket: &'a Value, expected: &str, path: &str) -> Result<&'a Value, FieldError> {
    let tc = socket
        .get("typed_config")
        .ok_or_else(|| FieldError::new(format!("{path}.typed_config"), "required"))?;
    if type_of(tc) != expected {
        return Err(FieldError::new(
            format!("{path}.typed_config"),
            format!(
                "type {} not supported here (expected {expected})",
                type_of(tc)
            ),
        ));
    }
    Ok(tc)
}

fn versions(
    common: &Value,
    path: &str,
) -> Result<Vec<&'static SupportedProtocolVersion>, FieldError> {
    let params = common.get("tls_params");
    let get = |k: &str| {
        params
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .unwrap_or("TLS_AUTO")
    };
    let min = match get("tls_minimum_protocol_version") {
        "TLSv1_3" => 3,
        _ => 2,
    };
    let max = match get("tls_maximum_protocol_version") {
        "TLSv1_2" => 2,
        _ => 3,
    };
    let mut out = Vec::new();
    if min <= 2 && max >= 2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(FieldError::new(
            format!("{path}.tls_params"),
            "minimum version is above the maximum",
        ));
    }
    Ok(out)
}

fn certificate_chain(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(FieldError::new(path, "no PEM certificate found")),
        Err(e) => Err(FieldError::new(
            path,
            format!("invalid PEM certificate: {e}"),
        )),
    }
}

fn private_key(pem: &[u8], path: &str) -> Result<PrivateKeyDer<'static>, FieldError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| FieldError::new(path, format!("invalid PEM private key: {e}")))
}

/// The first `tls_certificates` entry: chain and key, checked to belong together.
fn identity(common: &Value, path: &str) -> Result<Option<SingleCertAndKey>, FieldError> {
    let Some(first) = common
        .get("tls_certificates")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        return Ok(None);
    };
    let cpath = format!("{path}.tls_certificates[0]");
    if common
        .get("tls_certificates")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1)
    {
        return Err(FieldError::new(
            format!("{path}.tls_certificates"),
            "only one certificate is supported",
        ));
    }
    let chain_src = first
        .get("certificate_chain")
        .ok_or_else(|| FieldError::new(format!("{cpath}.certificate_chain"), "required"))?;
    let key_src = first
        .get("private_key")
        .ok_or_else(|| FieldError::new(format!("{cpath}.private_key"), "required"))?;
    let chain = certificate_chain(
        &data_source::read(chain_src, &format!("{cpath}.certificate_chain"))?,
        &format!("{cpath}.certificate_chain"),
    )?;
    let key = private_key(
        &data_source::read(key_src, &format!("{cpath}.private_key"))?,
        &format!("{cpath}.private_key"),
    )?;
    certified_key(chain, key, &cpath).map(Some)
}

/// A chain and its private key, with the key checked against the certificate's public key.
///
/// rustls's own check parses the certificate with webpki, which refuses X.509 v1 certificates;
/// Envoy serves those (self-signed v1 certificates are common in examples), so those are read
/// with x509-parser instead.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    path: &str,
) -> Result<SingleCertAndKey, FieldError> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| FieldError::new(format!("{path}.private_key"), e.to_string()))?;
    let spki = signing.public_key().map(|k| k.as_ref().to_vec());
    let ck = CertifiedKey::new(chain, signing);
    let mismatch = || {
        FieldError::new(
            format!("{path}.private_key"),
            "the private key does not match the certificate",
        )
    };
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(mismatch()),
        Err(_) => {
            let bad_cert = |e: String| {
                FieldError::new(
                    format!("{path}.certificate_chain"),
                    format!("invalid certificate: {e}"),
                )
            };
            let der = ck.end_entity_cert().map_err(|e| bad_cert(e.to_string()))?;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| bad_cert(e.to_string()))?;
            if spki.is_some_and(|k| k != cert.public_key().raw) {
                return Err(mismatch());
            }
        }
    }
    Ok(SingleCertAndKey::from(ck))
}

/// `validation_context`: the trusted roots (if any) and the subject-alternative-name matchers.
fn validation(
    common: &Value,
    path: &str,
) -> Result<(Option<Arc<RootCertStore>>, SanMatchers), FieldError> {
    let Some(vc) = common.get("validation_context") else {
        return Ok((None, SanMatchers::default()));
    };
    let vpath = format!("{path}.validation_context");
    let sans = SanMatchers::from_config(vc, &vpath)?;
    let Some(ca) = vc.get("trusted_ca") else {
        if !sans.is_empty() {
            // Envoy refuses this too: names alone prove nothing without a chain to trust.
            return Err(FieldError::new(
                format!("{vpath}.trusted_ca"),
                "required when subject alternative names are matched",
            ));
        }
        return Ok((None, sans));
    };
    let cpath = format!("{vpath}.trusted_ca");
    let mut roots = RootCertStore::empty();
    for cert in certificate_chain(&data_source::read(ca, &cpath)?, &cpath)? {
        roots
            .add(cert)
            .map_err(|e| FieldError::new(&cpath, format!("invalid CA certificate: {e}")))?;
    }
    Ok((Some(Arc::new(roots)), sans))
}

fn alpn(common: &Value) -> Vec<Vec<u8>> {
    common
        .get("alpn_protocols")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|p| p.as_bytes().to_vec())
                .collect()
        })
        .unwrap_or_default()
}

/// A `transport_socket` with a `DownstreamTlsContext` → a rustls server configuration.
pub fn server_config(socket: &Value, path: &str) -> Result<Arc<ServerConfig>, FieldError> {
    let tc = tls_context(socket, DOWNSTREAM_TLS, path)?;
    let tpath = format!("{path}.typed_config");
    let empty = Value::Null;
    let common = tc.get("common_tls_context").unwrap_or(&empty);
    let cpath = format!("{tpath}.common_tls_context");
    let identity = identity(common, &cpath)?.ok_or_else(|| {
        FieldError::new(
            format!("{cpath}.tls_certificates"),
            "a certificate is required",
        )
    })?;
    let require = tc
        .get("require_client_certificate")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(common, &cpath)?)
        .map_err(|e| FieldError::new(&cpath, e.to_string()))?;
    let builder = match validation(common, &cpath)? {
        (Some(roots), sans) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| FieldError::new(&cpath, e.to_string()))?;
            let verifier: Arc<dyn ClientCertVerifier> = if sans.is_empty() {
                verifier
            } else {
                Arc::new(DownstreamVerifier::new(verifier, sans))
            };
            builder.with_client_cert_verifier(verifier)
        }
        (None, _) if require => {
            return Err(FieldError::new(
                format!("{tpath}.require_client_certificate"),
                "needs common_tls_context.validation_context.trusted_ca",
            ))
        }
        (None, _) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(identity));
    config.alpn_protocols = alpn(common);
    Ok(Arc::new(config))
}

/// TLS towards a cluster's endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// Server name sent (`sni`). As in Envoy, it is not compared with the certificate.
    pub sni: Option<ServerName<'static>>,
}

/// A cluster `transport_socket` with an `UpstreamTlsContext` → a rustls client configuration.
pub fn client_config(socket: &Value, path: &str, h2: bool) -> Result<UpstreamTls, FieldError> {
    let tc = tls_context(socket, UPSTREAM_TLS, path)?;
    let tpath = format!("{path}.typed_config");
    let empty = Value::Null;
    let common = tc.get("common_tls_context").unwrap_or(&empty);
    let cpath = format!("{tpath}.common_tls_context");
    let (roots, sans) = validation(common, &cpath)?;
    if roots.is_none() {
        tracing::warn!(
            at = %cpath,
            "upstream TLS without validation_context.trusted_ca: the server's certificate is \
             not verified (as in Envoy)"
        );
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(common, &cpath)?)
        .map_err(|e| FieldError::new(&cpath, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UpstreamVerifier::new(roots, sans, provider())));
    let mut config = match identity(common, &cpath)? {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(identity)),
        None => builder.with_no_client_auth(),
    };
    let mut protocols = alpn(common);
    if protocols.is_empty() {
        protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
    }
    config.alpn_protocols = protocols;
    let sni = match tc.get("sni").and_then(Value::as_str) {
        Some(name) => Some(
            ServerName::try_from(name.to_string())
                .map_err(|e| FieldError::new(format!("{tpath}.sni"), e.to_string()))?,
        ),
        None => None,
    };
    Ok(UpstreamTls {
        config: Arc::new(config),
        sni,
    })
}
