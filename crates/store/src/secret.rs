//! Channel keys are encrypted at rest with AES-256-GCM under the instance secret key.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

use crate::StoreError;

/// Encrypts and decrypts channel keys, and signs URLs. Cloning shares nothing mutable.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    /// The URL-signing key, derived from the secret key (so every instance that shares
    /// `TOLLGATE_SECRET_KEY` accepts the others' URLs).
    signing: [u8; 32],
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl SecretBox {
    /// Builds the box from 32 raw key bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tollgate signed urls v1\0");
        h.update(key);
        Self {
            cipher: Aes256Gcm::new(key.into()),
            signing: h.finalize().into(),
        }
    }

    /// The signature of `message` (HMAC-SHA256, hex).
    pub fn sign(&self, message: &str) -> String {
        use hmac::Mac;
        let Ok(mut mac) = <HmacSha256 as hmac::Mac>::new_from_slice(&self.signing) else {
            return String::new();
        };
        mac.update(message.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex) signs `message`, compared in constant time.
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        use hmac::Mac;
        let (Ok(sig), Ok(mut mac)) = (
            hex::decode(signature),
            <HmacSha256 as hmac::Mac>::new_from_slice(&self.signing),
        ) else {
            return false;
        };
        mac.update(message.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }

    /// Parses a key given as 64 hex characters (or 44 base64 characters).
    pub fn from_text(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| STANDARD.decode(text).ok())
            .ok_or_else(|| StoreError::Config("secret key is neither hex nor base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::Config("secret key must be 32 bytes".into()))?;
        Ok(Self::new(&key))
    }

    /// A fresh random key as 64 hex characters.
    pub fn generate_text() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        hex::encode(key)
    }

    /// Encrypts `plain` into base64(nonce || ciphertext).
    pub fn seal(&self, plain: &str) -> Result<String, StoreError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), plain.as_bytes())
            .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(STANDARD.encode(out))
    }

    /// Reverses [`SecretBox::seal`].
    pub fn open(&self, sealed: &str) -> Result<String, StoreError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| StoreError::Corrupt("channel key is not base64".into()))?;
        if bytes.len() < 12 {
            return Err(StoreError::Corrupt("channel key too short".into()));
        }
        let (nonce, body) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| StoreError::Corrupt("channel key nonce".into()))?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), body)
            .map_err(|_| {
                StoreError::Corrupt("channel key does not decrypt with this secret key".into())
            })?;
        String::from_utf8(plain).map_err(|_| StoreError::Corrupt("channel key is not UTF-8".into()))
    }
}

#[cfg(test)]
mod signing_tests {
    use super::SecretBox;

    #[test]
    fn a_signature_verifies_only_its_message_under_its_key() {
        let a = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        let b = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        let sig = a.sign("task_1\n7\n1800000000");
        assert!(a.verify("task_1\n7\n1800000000", &sig));
        assert!(!a.verify("task_1\n8\n1800000000", &sig));
        assert!(!b.verify("task_1\n7\n1800000000", &sig));
        assert!(!a.verify("task_1\n7\n1800000000", "zz"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_to_the_same_text_and_never_contains_it() {
        let sb = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        let sealed = sb.seal("sk-upstream-secret").unwrap();
        assert!(!sealed.contains("sk-upstream-secret"));
        assert_eq!(sb.open(&sealed).unwrap(), "sk-upstream-secret");
    }

    #[test]
    fn a_key_sealed_under_another_secret_does_not_open() {
        let a = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        let b = SecretBox::from_text(&SecretBox::generate_text()).unwrap();
        assert!(b.open(&a.seal("x").unwrap()).is_err());
    }
}
