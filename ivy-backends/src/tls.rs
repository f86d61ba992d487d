//! TLS for `amqps://` and `rediss://`: the URL options that name a CA and a client
//! certificate (read once, when the URL is parsed), and telling a certificate problem, which
//! no retry can fix, from a connection that may come back.
//!
//! The options are RabbitMQ's own URI parameters (its "URI query parameters" guide), taken for
//! both schemes so one spelling serves both URLs:
//!
//! - `cacertfile=PATH`: PEM file of the CA certificate(s) to trust for this URL;
//! - `certfile=PATH` and `keyfile=PATH`: a client certificate (PEM, the chain's leaf first)
//!   and its unencrypted private key (PEM), for servers that ask for one (mutual TLS);
//! - `verify=verify_peer`: the only mode; `verify_none` is refused (Ivy always checks the
//!   server's certificate and host name);
//! - `server_name_indication=` is refused: the host name checked is the URL's host.
//!
//! Without `cacertfile` the system's roots are trusted, which the standard `SSL_CERT_FILE`
//! (a PEM file) or `SSL_CERT_DIR` environment variables replace (rustls-native-certs).
//! Owns no connection: each backend hands the material to its client library.

use std::error::Error as StdError;
use std::io;
use std::path::Path;
use std::sync::Arc;

use ivy_core::url::ParsedUrl;
use ivy_core::Result;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};

/// The URL options of this module, which the client libraries must not see.
pub(crate) const OPTIONS: [&str; 5] = [
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
];

/// The TLS material a URL names, read and checked.
#[derive(Clone, Default)]
pub(crate) struct TlsFiles {
    /// PEM: the CA certificates of `cacertfile`.
    pub(crate) ca: Option<Vec<u8>>,
    /// PEM: the client certificate chain and key of `certfile` and `keyfile`.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files `parsed`'s TLS options name. A TLS option on a URL without TLS, a file
    /// that cannot be read or holds no certificate (or key), and an option Ivy does not
    /// support are errors about `url` (shown redacted), never silently ignored.
    pub(crate) fn from_url(url: &str, parsed: &ParsedUrl, tls: bool) -> Result<Self> {
        let bad = |reason: String| ivy_core::url::error(url, reason);
        let (mut ca, mut cert, mut key) = (None, None, None);
        for (k, value) in parsed.query_pairs() {
            match k.as_str() {
                "cacertfile" => ca = Some(value),
                "certfile" => cert = Some(value),
                "keyfile" => key = Some(value),
                "verify" if value == "verify_peer" => {}
                "verify" => {
                    return Err(bad(format!(
                        "verify={value} is not supported: Ivy always verifies the server's certificate (verify_peer)"
                    )))
                }
                "server_name_indication" => {
                    return Err(bad(
                        "server_name_indication is not supported: the certificate is checked against the URL's host"
                            .into(),
                    ))
                }
                _ => continue,
            }
            if !tls {
                return Err(bad(format!("`{k}` needs TLS: use {}s://", parsed.scheme())));
            }
        }
        let ca = match ca {
            Some(path) => {
                let pem = read(path, "cacertfile").map_err(bad)?;
                certificates(&pem, path, "cacertfile").map_err(bad)?;
                Some(pem)
            }
            None => None,
        };
        let client = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = read(cert, "certfile").map_err(bad)?;
                certificates(&chain, cert, "certfile").map_err(bad)?;
                let pem = read(key, "keyfile").map_err(bad)?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    bad(format!(
                        "keyfile {key}: no unencrypted private key in it ({e})"
                    ))
                })?;
                Some((chain, pem))
            }
            (None, None) => None,
            _ => return Err(bad("certfile and keyfile go together".into())),
        };
        Ok(TlsFiles { ca, client })
    }
}

fn read(path: &str, option: &str) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("{option} {path}: could not read it: {e}"))
}

/// Checks that `pem` holds at least one certificate.
fn certificates(pem: &[u8], path: &str, option: &str) -> std::result::Result<(), String> {
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("{option} {path}: unreadable PEM ({e})"))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!("{option} {path}: no PEM certificate in it"));
    }
    Ok(())
}

/// What is wrong with the TLS handshake that `e` (or an error it was caused by) reports, when
/// it is a problem that trying again cannot fix: a certificate not trusted, not valid for the
/// host name, expired, or refused by the server; or no protocol both sides speak. `None` for
/// anything else (a refused or dropped connection, a timeout).
pub(crate) fn handshake_problem(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(problem) = rustls_error(e).and_then(describe) {
            return Some(problem);
        }
        next = e.source();
    }
    None
}

/// The rustls error `e` is or wraps. Two wrappers hide it from `source()`: an `io::Error`
/// shows the error it wraps but does not give it as its source, and redis-rs keeps its cause
/// in an `Arc`, whose `source()` is the cause's source, not the cause.
fn rustls_error<'e>(e: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        Some(tls)
    } else if let Some(io) = e.downcast_ref::<io::Error>() {
        rustls_error(io.get_ref()?)
    } else if let Some(shared) = e.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
        rustls_error(shared.as_ref())
    } else {
        None
    }
}

fn describe(e: &rustls::Error) -> Option<String> {
    use rustls::Error as E;
    let what = match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "the server's certificate is not trusted (unknown issuer: give its CA with ?cacertfile= or SSL_CERT_FILE)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not match the host name".into()
            }
            _ => "the server's certificate is not acceptable".into(),
        },
        E::NoCertificatesPresented => "the server presented no certificate".into(),
        E::PeerIncompatible(_) => "the server's TLS settings are incompatible with Ivy's".into(),
        E::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied => {
                format!("the server refused Ivy's client certificate ({alert:?})")
            }
            AlertDescription::CertificateRequired => {
                "the server requires a client certificate (give ?certfile= and ?keyfile=)".into()
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
                format!("the server refused the TLS handshake ({alert:?})")
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(url: &str) -> Result<TlsFiles> {
        let parsed = ParsedUrl::parse(url).unwrap();
        let tls = matches!(parsed.scheme(), "amqps" | "rediss");
        TlsFiles::from_url(url, &parsed, tls)
    }

    #[test]
    fn options_are_refused_where_they_cannot_work() {
        for (url, says) in [
            ("amqp://u:secret@h/?cacertfile=/x", "needs TLS"),
            ("redis://:secret@h/?certfile=/x&keyfile=/y", "needs TLS"),
            ("amqps://u:secret@h/?verify=verify_none", "always verifies"),
            (
                "amqps://u:secret@h/?server_name_indication=x",
                "not supported",
            ),
            ("rediss://:secret@h/?certfile=/x", "go together"),
            (
                "rediss://:secret@h/?cacertfile=/no/such/ca.pem",
                "could not read",
            ),
            (
                "amqps://u:secret@h/?cacertfile=/dev/null",
                "no PEM certificate",
            ),
        ] {
            let e = files(url).err().expect(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let none = files("amqps://u:p@h/?verify=verify_peer&heartbeat=5").unwrap();
        assert!(none.ca.is_none() && none.client.is_none());
    }

    #[test]
    fn certificate_problems_are_found_through_io_errors() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, unknown);
        let problem = handshake_problem(&io).expect("a certificate problem");
        assert!(problem.contains("not trusted"), "{problem}");
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(handshake_problem(&name).unwrap().contains("host name"));
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(handshake_problem(&refused).is_none());
        let corrupt = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(handshake_problem(&corrupt).is_none());
        // As redis-rs holds it.
        let untrusted = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let shared: Arc<dyn StdError + Send + Sync> =
            Arc::new(io::Error::new(io::ErrorKind::InvalidData, untrusted));
        assert!(handshake_problem(&shared).is_some());
    }
}
