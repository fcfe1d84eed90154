//! The fleet's private PKI: one CA per controller, certificates for the controller,
//! operators and agents.
//!
//! Names carry the identity: a client certificate's common name is `agent:<id>` or
//! `operator:<name>`; the controller's certificate is valid for [`CONTROLLER_NAME`] and
//! [`ENROLL_NAME`], the fixed names every client verifies, whatever address it dials (the
//! CA is private to the fleet, so these names mean "this fleet's controller"). EKUs keep the
//! roles apart: client certificates cannot serve, the server certificate cannot log in.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::{Error, Result};

/// The name in the controller's certificate that agents and operators verify.
pub const CONTROLLER_NAME: &str = "controller.lifeboat";
/// The TLS server name a client sends to reach enrollment (no client certificate).
pub const ENROLL_NAME: &str = "enroll.lifeboat";

fn pki<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Pki(format!("{what}: {e}"))
}

/// Client certificates are backdated by this much, for clock skew between machines.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(3600);

/// `n` days.
pub fn days(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n * 86_400)
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less the skew allowance) for `lifetime`.
    pub fn from_now(lifetime: std::time::Duration) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + lifetime,
        }
    }

    /// `not_after` as Unix milliseconds.
    pub fn not_after_ms(&self) -> i64 {
        (self.not_after.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The validity window of a PEM certificate.
pub fn validity_of(cert_pem: &str) -> Result<Validity> {
    let der = cert_der(cert_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(pki("reading certificate"))?;
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(pki("certificate validity"));
    Ok(Validity {
        not_before: at(cert.validity().not_before.timestamp())?,
        not_after: at(cert.validity().not_after.timestamp())?,
    })
}

fn random_serial() -> Result<SerialNumber> {
    let mut b: [u8; 16] = crate::sign::random_bytes()?;
    b[0] = (b[0] & 0x7f) | 0x40; // positive, and no leading zero byte for DER to strip
    Ok(SerialNumber::from_slice(&b))
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The fleet CA.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// Creates a new CA valid for 10 years.
    pub fn generate() -> Result<Ca> {
        let key = KeyPair::generate().map_err(pki("generating CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let tag: [u8; 4] = crate::sign::random_bytes()?;
        dn.push(
            DnType::CommonName,
            format!("Lifeboat fleet CA {}", hex::encode(tag)),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::from_now(days(3650));
        (params.not_before, params.not_after) = (v.not_before, v.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(pki("self-signing CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(pki("parsing CA key"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(pki("loading CA certificate"))
    }

    /// The controller's TLS certificate.
    pub fn issue_server(&self) -> Result<CertKey> {
        let key = KeyPair::generate().map_err(pki("generating server key"))?;
        let mut params =
            CertificateParams::new(vec![CONTROLLER_NAME.to_string(), ENROLL_NAME.to_string()])
                .map_err(pki("server names"))?;
        params.distinguished_name = dn(CONTROLLER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let v = Validity::from_now(days(365));
        (params.not_before, params.not_after) = (v.not_before, v.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(pki("signing server certificate"))?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate with a key generated here (operator identities).
    pub fn issue_client(&self, common_name: &str, validity: Validity) -> Result<(CertKey, String)> {
        let key = KeyPair::generate().map_err(pki("generating client key"))?;
        let (cert_pem, serial) = self.sign_client(common_name, &key, validity)?;
        Ok((
            CertKey {
                cert_pem,
                key_pem: key.serialize_pem(),
            },
            serial,
        ))
    }

    /// Signs an agent's CSR. Only the CSR's public key is used: the name, usages and
    /// validity are the controller's choice, never the requester's. Returns the
    /// certificate PEM and its serial (hex).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<(String, String)> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(pki("invalid certificate signing request"))?;
        self.sign_client(common_name, &csr.public_key, validity)
    }

    fn sign_client(
        &self,
        common_name: &str,
        public_key: &impl rcgen::PublicKeyData,
        validity: Validity,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = (validity.not_before, validity.not_after);
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(public_key, &self.issuer()?)
            .map_err(pki("signing client certificate"))?;
        Ok((cert.pem(), serial_hex))
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new TLS key and a CSR for it (the agent side of enrollment).
pub fn make_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(pki("generating key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    let csr = params
        .serialize_request(&key)
        .map_err(pki("building CSR"))?;
    Ok((csr.pem().map_err(pki("encoding CSR"))?, key.serialize_pem()))
}

/// The DER bytes of the first certificate in a PEM string.
pub fn cert_der(cert_pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(pki("parsing certificate PEM"))
}

/// `sha256:<64 hex>` of a certificate's DER: what an operator pins at enrollment.
pub fn fingerprint_der(der: &[u8]) -> String {
    format!("sha256:{}", crate::sign::sha256_hex(der))
}

pub fn fingerprint(cert_pem: &str) -> Result<String> {
    Ok(fingerprint_der(&cert_der(cert_pem)?))
}

/// Normalizes a user-typed fingerprint: accepts `sha256:` prefixes, colons and upper case.
pub fn normalize_fingerprint(input: &str) -> Result<String> {
    let hexpart: String = input
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Pki(format!(
            "{input:?} is not a SHA-256 fingerprint (64 hex characters, optionally prefixed with sha256:)"
        )));
    }
    Ok(format!("sha256:{hexpart}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_are_ignored_and_fingerprints_normalize() {
        let ca = Ca::generate().expect("ca");
        let (csr, _key) = make_csr("operator:admin").expect("csr");
        let (cert, serial) = ca
            .sign_csr(&csr, "agent:1234", Validity::from_now(days(7)))
            .expect("sign");
        assert_eq!(serial.len(), 32);
        let der = cert_der(&cert).expect("der");
        let text = String::from_utf8_lossy(der.as_ref()).into_owned();
        assert!(text.contains("agent:1234") && !text.contains("operator:admin"));
        let fp = fingerprint(&ca.cert_pem).expect("fp");
        let upper_colons = fp[7..]
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(normalize_fingerprint(&upper_colons).expect("normalize"), fp);
        assert!(normalize_fingerprint("abc").is_err());
    }
}
