//! TLS trust for the PVE API: a pinned sha256 certificate fingerprint or a CA file.
//!
//! PVE nodes use certificates from a cluster-local CA, so the usual web PKI rarely applies.
//! Pinning follows Proxmox's own Perl client: compare the sha256 of the leaf certificate with the
//! pinned set and skip chain and hostname checks (the handshake signature is still verified, so
//! the server must hold the key). A mismatch is remembered so the client can say which
//! fingerprint it saw; the handshake fails before any HTTP request (and so the token) is sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::pve::error::PveError;

/// How the server certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// The platform's web PKI roots (e.g. an ACME certificate on pveproxy).
    WebPki,
    /// Accept only a leaf certificate with one of these sha256 fingerprints.
    Pinned(Vec<[u8; 32]>),
    /// Trust the CA certificate(s) in this PEM file (e.g. `pve-root-ca.pem`).
    CaFile(PathBuf),
    /// No checks at all (`insecure = true`).
    Insecure,
}

/// Parses `AA:BB:…` (32 bytes; colons optional, any case). Several may be separated by commas
/// or whitespace, for clusters where the endpoint may be any node.
pub fn parse_fingerprints(s: &str) -> Result<Vec<[u8; 32]>, PveError> {
    let mut out = Vec::new();
    for part in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let hexstr: String = part.chars().filter(|&c| c != ':').collect();
        let bytes = hex::decode(&hexstr)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                PveError::Config(format!(
                    "fingerprint '{part}' is not a sha256 fingerprint (32 hex bytes, AA:BB:… as \
                 `pvenode cert info` shows it)"
                ))
            })?;
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&bytes);
        out.push(fp);
    }
    if out.is_empty() {
        return Err(PveError::Config("fingerprint is empty".into()));
    }
    Ok(out)
}

/// Formats a fingerprint the way PVE shows it: upper-case hex pairs joined by colons.
pub fn format_fingerprint(fp: &[u8]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The sha256 fingerprint of a DER certificate.
pub fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the server by its leaf certificate's fingerprint only.
pub struct PinnedVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    /// The fingerprint of the last rejected certificate, for the error message.
    last_mismatch: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field(
                "pins",
                &self
                    .pins
                    .iter()
                    .map(|p| format_fingerprint(p))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PinnedVerifier {
    pub fn new(pins: Vec<[u8; 32]>) -> Self {
        Self {
            pins,
            provider: provider(),
            last_mismatch: Arc::new(Mutex::new(None)),
        }
    }

    /// Shared slot holding the fingerprint of the last certificate that did not match.
    pub fn mismatch_slot(&self) -> Arc<Mutex<Option<String>>> {
        Arc::clone(&self.last_mismatch)
    }

    pub fn expected(&self) -> String {
        self.pins
            .iter()
            .map(|p| format_fingerprint(p))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint_of(end_entity.as_ref());
        if self.pins.contains(&seen) {
            return Ok(ServerCertVerified::assertion());
        }
        let seen = format_fingerprint(&seen);
        if let Ok(mut slot) = self.last_mismatch.lock() {
            *slot = Some(seen.clone());
        }
        Err(rustls::Error::General(format!(
            "certificate fingerprint {seen} is not pinned"
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts only the pinned fingerprints.
pub fn pinned_config(verifier: Arc<PinnedVerifier>) -> Result<rustls::ClientConfig, PveError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PveError::Config(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A rustls client configuration that trusts the CA certificates in `path` (PEM).
pub fn ca_config(path: &Path) -> Result<rustls::ClientConfig, PveError> {
    let pem = std::fs::read(path)
        .map_err(|e| PveError::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    // rustls-pemfile is unmaintained (RUSTSEC-2025-0134); pki-types parses PEM itself.
    for cert in CertificateDer::pem_slice_iter(pem.as_slice()) {
        let cert = cert
            .map_err(|e| PveError::Config(format!("CA file {}: bad PEM: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            PveError::Config(format!("CA file {}: bad certificate: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(PveError::Config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PveError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let fp = "6B:0C:7E:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:9F";
        let parsed = parse_fingerprints(fp).unwrap();
        assert_eq!(format_fingerprint(&parsed[0]), fp);
        let lower = fp.to_lowercase().replace(':', "");
        assert_eq!(parse_fingerprints(&lower).unwrap(), parsed);
        assert_eq!(parse_fingerprints(&format!("{fp}, {fp}")).unwrap().len(), 2);
        assert!(parse_fingerprints("AA:BB").is_err());
        assert!(parse_fingerprints("").is_err());
        assert!(parse_fingerprints(&fp.replace("6B", "ZZ")).is_err());
    }

    #[test]
    fn verifier_accepts_pin_and_rejects_other() {
        let ck = rcgen::generate_simple_self_signed(vec!["pve1.lan".to_owned()]).unwrap();
        let der = ck.cert.der().clone();
        let good = fingerprint_of(der.as_ref());
        let name = ServerName::try_from("pve1.lan").unwrap();

        let v = PinnedVerifier::new(vec![good]);
        assert!(
            v.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
                .is_ok()
        );

        let v = PinnedVerifier::new(vec![[0u8; 32]]);
        assert!(
            v.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
                .is_err()
        );
        let seen = v.mismatch_slot().lock().unwrap().clone().unwrap();
        assert_eq!(seen, format_fingerprint(&good));
    }
}
