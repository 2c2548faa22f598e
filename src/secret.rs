//! Secrets, handled the same way everywhere: API keys are known to storage only by their
//! SHA-256, and secrets are compared in constant time. At the bottom of the house so login,
//! storage, settings and the relay share it without importing one another.

use sha2::{Digest, Sha256};

/// The hex SHA-256 of an API key (or login token): how the database knows it.
pub fn key_hash(api_key: &str) -> String {
    hex(&Sha256::digest(api_key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The hex HMAC-SHA256 of `message` under `key`: the console's cookies and form tokens.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    use hmac::Mac as _;
    match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            hex(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => String::new(),
    }
}

/// Whether `header` (`X-Hub-Signature-256: sha256=<hex>`) is the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time: how Meta signs every webhook of an app.
pub fn signed_with(secret: &[u8], body: &[u8], header: &str) -> bool {
    use hmac::Mac as _;
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_match_only_their_body_and_secret() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style
        // known answer.
        let body = b"The quick brown fox jumps over the lazy dog";
        let good = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        assert!(signed_with(b"key", body, good));
        assert_eq!(format!("sha256={}", hmac_hex(b"key", body)), good);
        assert!(signed_with(
            b"key",
            body,
            &good.to_ascii_uppercase().replace("SHA256", "sha256")
        ));
        assert!(!signed_with(b"other", body, good));
        assert!(!signed_with(
            b"key",
            b"The quick brown fox jumps over the lazy cog",
            good
        ));
        assert!(!signed_with(b"key", body, &good[..good.len() - 2]));
        assert!(!signed_with(
            b"key",
            body,
            good.trim_start_matches("sha256=")
        ));
        assert!(!signed_with(b"key", body, ""));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }

    #[test]
    fn keys_are_known_by_their_sha256() {
        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
