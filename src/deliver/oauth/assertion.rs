//! Certificate credentials: the client proves itself with a JWT signed by the private key of a
//! certificate registered on the Entra app (Microsoft's advice over client secrets).
//!
//! The assertion (Microsoft identity platform, "certificate credentials"): header `alg` RS256, `typ`
//! JWT, `x5t` = base64url(SHA-1 of the certificate's DER), `x5t#S256` = base64url(SHA-256 of it);
//! claims `aud` = the token endpoint, `iss` = `sub` = the client id, a random `jti`, `nbf` = `iat` =
//! now, `exp` = now + 10 minutes. Entra accepts RSA keys only.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;

/// How long an assertion is valid.
pub(crate) const ASSERTION_LIFETIME: u64 = 600;

/// The `client_assertion_type` that goes with the assertion.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A loaded certificate and key that sign client assertions.
pub(crate) struct AssertionSigner {
    key: RsaKeyPair,
    x5t: String,
    x5t_s256: String,
    rng: SystemRandom,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// Reads the certificate (the first in the PEM file) and its RSA private key (PKCS#8 or PKCS#1 PEM;
    /// the key may be in the same file). Errors name the file and what is wrong with it.
    pub(crate) fn load(certificate: &Path, private_key: &Path) -> anyhow::Result<Self> {
        let cert_name = certificate.display();
        let cert = CertificateDer::pem_file_iter(certificate)
            .with_context(|| format!("cannot read the OAuth certificate_file {cert_name}"))?
            .next()
            .with_context(|| {
                format!("the OAuth certificate_file {cert_name} contains no certificate (expected PEM \"BEGIN CERTIFICATE\")")
            })?
            .with_context(|| format!("the OAuth certificate_file {cert_name} is not valid PEM"))?;
        let key_name = private_key.display();
        let key = PrivateKeyDer::from_pem_file(private_key).with_context(|| {
            format!("cannot read a private key from the OAuth private_key_file {key_name}")
        })?;
        let key = match &key {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => bail!(
                "the OAuth private_key_file {key_name} is not an RSA key: Entra certificate credentials need RSA"
            ),
        }
        .map_err(|e| match e.to_string().as_str() {
            // A PKCS#8 key of another kind (EC, Ed25519).
            "WrongAlgorithm" => anyhow::anyhow!(
                "the OAuth private_key_file {key_name} is not an RSA key: Entra certificate credentials need RSA"
            ),
            _ => anyhow::anyhow!(
                "the OAuth private_key_file {key_name} is not a usable RSA key ({e})"
            ),
        })?;
        // The RSAPublicKey DER is inside the certificate's SubjectPublicKeyInfo when they belong together.
        let public = key.public_key().as_ref();
        if !cert.windows(public.len()).any(|w| w == public) {
            bail!(
                "the private key in {key_name} does not belong to the certificate in {cert_name}"
            );
        }
        Ok(AssertionSigner {
            x5t: B64URL.encode(ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                &cert,
            )),
            x5t_s256: B64URL.encode(ring::digest::digest(&ring::digest::SHA256, &cert)),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The certificate's thumbprint as Entra shows it (base64url of SHA-1), for messages.
    pub(crate) fn thumbprint(&self) -> &str {
        &self.x5t
    }

    /// A signed assertion for `client_id` towards `audience` (the token endpoint), valid from `now`.
    pub(crate) fn sign(&self, client_id: &str, audience: &str, now: u64) -> anyhow::Result<String> {
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": self.x5t,
            "x5t#S256": self.x5t_s256,
        });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow::anyhow!("signing the client assertion failed"))?;
        Ok(format!("{signing_input}.{}", B64URL.encode(signature)))
    }
}

/// A random UUID (version 4) as the token's unique id.
fn jti() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_is_a_random_uuid() {
        let (a, b) = (jti(), jti());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn a_non_rsa_key_or_a_missing_file_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
        let cert = rcgen::CertificateParams::new(vec!["app".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("app.crt");
        let key_path = dir.path().join("app.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let err = AssertionSigner::load(&cert_path, &key_path).unwrap_err();
        assert!(format!("{err:#}").contains("not an RSA key"), "{err:#}");
        let err = AssertionSigner::load(&dir.path().join("none.crt"), &key_path).unwrap_err();
        assert!(format!("{err:#}").contains("none.crt"), "{err:#}");
    }
}
