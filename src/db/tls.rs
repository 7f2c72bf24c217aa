//! TLS to PostgreSQL, configured as libpq users expect: `sslmode` and `sslrootcert` in the
//! connection URL. tokio-postgres itself knows only disable/prefer/require and no root
//! certificates, so both parameters are taken out of the URL here and become rustls settings.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (libpq's `allow` is treated the same), unverified.
    Prefer,
    /// TLS or fail; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, the certificate chain checked against `sslrootcert`, any host name.
    VerifyCa,
    /// TLS, the chain checked and the certificate issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS half of a connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` (libpq's default: prefer).
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for Mozilla's public roots.
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL or `key=value` form);
/// returns what is left, for tokio-postgres to parse, and the TLS settings.
pub fn split_url(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_uri(url, &mut params)?
    } else {
        split_key_values(url, &mut params)?
    };
    Ok((rest, params))
}

fn take(params: &mut TlsParams, key: &str, value: String) -> Result<bool, String> {
    match key {
        "sslmode" => params.mode = SslMode::parse(&value)?,
        "sslrootcert" => params.root_cert = Some(value),
        _ => return Ok(false),
    }
    Ok(true)
}

fn split_uri(url: &str, params: &mut TlsParams) -> Result<String, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8"))?
            .into_owned();
        if !take(params, key, value)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// `host=h sslmode=require password='a b'`: keys, `=` (spaces allowed around it), and
/// values that are bare words or single-quoted with backslash escapes.
fn split_key_values(text: &str, params: &mut TlsParams) -> Result<String, String> {
    let mut kept = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!("expected = after {key:?} in the connection string"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {key}")),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        if !take(params, &key, value)? {
            kept.push(&text[start..end]);
        }
    }
    Ok(kept.iter().map(|s| s.trim()).collect::<Vec<_>>().join(" "))
}

/// The settings for one connection target: whether to ask for TLS, and how to check it.
pub fn connector(params: &TlsParams) -> Result<(WireMode, MakeRustlsConnect), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let wire = match params.mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        _ => WireMode::Require,
    };
    let roots = match (params.mode, &params.root_cert) {
        (SslMode::Disable, _) => None,
        // As libpq: given a CA, require (and prefer) check the chain like verify-ca.
        (_, Some(root)) => Some(load_roots(root)?),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            let default = default_root_file();
            match default.as_deref().filter(|path| path.exists()) {
                Some(path) => Some(load_roots(&path.to_string_lossy())?),
                None => {
                    return Err(format!(
                        "sslmode={} needs the server's CA certificate: add sslrootcert=/path/to/ca.pem \
                         (or sslrootcert=system for public CAs) to the database URL",
                        params.mode.name()
                    ))
                }
            }
        }
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(AcceptAnyCertificate(provider.clone())),
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
            if params.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((wire, MakeRustlsConnect::new(config)))
}

/// libpq's default CA file: `~/.postgresql/root.crt`.
fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"))
}

fn load_roots(root: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    if root == "system" {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let certificates = CertificateDer::pem_file_iter(root)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read sslrootcert {root}: {e}"))?;
    let (added, _ignored) = store.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!("sslrootcert {root} holds no usable certificate"));
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root, whatever name the certificate bears.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA: encrypted, not authenticated (libpq's behaviour). The
/// handshake signatures are still checked, so the session key belongs to the certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_tls_parameters_out_of_a_url() {
        let (rest, params) = split_url(
            "postgres://u:p@db.example.com:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/app?application_name=x"
        );
        assert_eq!(params.mode, SslMode::VerifyFull);
        assert_eq!(params.root_cert.as_deref(), Some("/etc/ca.pem"));
    }

    #[test]
    fn defaults_to_prefer_like_libpq() {
        let (rest, params) = split_url("postgres://u@h/db").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(params.mode, SslMode::Prefer);
    }

    #[test]
    fn takes_tls_parameters_out_of_key_values() {
        let (rest, params) =
            split_url("host=h sslmode = verify-ca password='a b\\'c' sslrootcert='/x y/ca.pem'")
                .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c'");
        assert_eq!(params.mode, SslMode::VerifyCa);
        assert_eq!(params.root_cert.as_deref(), Some("/x y/ca.pem"));
    }

    #[test]
    fn refuses_an_unknown_sslmode() {
        let error = split_url("postgres://h/db?sslmode=maybe").unwrap_err();
        assert!(error.contains("invalid sslmode \"maybe\""), "{error}");
    }

    #[test]
    fn verify_full_without_a_ca_says_what_to_add() {
        let params = TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: None,
        };
        // Only meaningful where ~/.postgresql/root.crt does not exist.
        if default_root_file().is_some_and(|p| p.exists()) {
            return;
        }
        let error = connector(&params).err().unwrap();
        assert!(error.contains("sslrootcert="), "{error}");
    }
}
