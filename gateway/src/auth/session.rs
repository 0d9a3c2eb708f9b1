//! Temporary S3 credentials for a login (what STS `AssumeRoleWithWebIdentity` hands out).
//!
//! Nothing is stored: the session token carries who it is for (subject, groups, expiry) and an
//! HMAC of it under the gateway's session secret, and the secret access key is an HMAC of the
//! access key id. Any replica holding the same secret checks them, a forged or altered token
//! fails its HMAC, and a token belongs to one access key id. Access key ids start with
//! [`PREFIX`], so a request names which kind of key it signs with.

use std::path::PathBuf;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::store::KeyRecord;

/// First letters of a temporary access key id (AWS's are `ASIA…`). Access keys are `ZG` and
/// base32 (`A`–`Z`, `2`–`7`), so no key starts with `ZG0`.
pub const PREFIX: &str = "ZG0";

/// `[sts]` in the configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// A file holding the session secret (at least 32 bytes), shared by every replica. Without
    /// it each process makes its own, and its credentials work on that process only.
    pub secret_file: Option<PathBuf>,
    /// Longest session a login may ask for (default 12 hours); a session never outlives its
    /// token.
    pub max_duration_seconds: Option<u64>,
}

/// Credentials handed to a client.
#[derive(Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expires: i64,
}

/// Why a session token does not let its holder in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    Missing,
    Invalid,
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    /// Access key id.
    k: String,
    /// Principal name (`oidc:SUBJECT`) and owner (subject).
    n: String,
    o: String,
    g: Vec<String>,
    /// Expiry, issue time (Unix seconds).
    e: i64,
    c: i64,
}

pub struct Sessions {
    secret: Vec<u8>,
    pub max_duration: u64,
}

impl Sessions {
    pub fn new(config: &SessionConfig) -> Result<Sessions, String> {
        let secret = match &config.secret_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("sts secret_file {}: {e}", path.display()))?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < 32 {
                    return Err(format!("sts secret_file {}: at least 32 bytes are needed", path.display()));
                }
                trimmed
            }
            // 48 characters of a 64-letter alphabet: 288 random bits.
            None => random(48, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")?.into_bytes(),
        };
        Ok(Sessions { secret, max_duration: config.max_duration_seconds.unwrap_or(12 * 3600) })
    }

    fn mac(&self, what: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(what);
        m.finalize().into_bytes().to_vec()
    }

    fn secret_of(&self, access_key_id: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        b64.encode(self.mac(format!("secret\0{access_key_id}").as_bytes()))[..40].to_string()
    }

    /// New credentials for `who` (a login), valid until `expires`.
    pub fn mint(&self, who: &KeyRecord, now: i64, expires: i64) -> Result<Credentials, String> {
        let access_key_id = format!("{PREFIX}{}", random(17, b"0123456789ABCDEF")?);
        let claims = Claims {
            k: access_key_id.clone(),
            n: who.access_key.clone(),
            o: who.owner.clone(),
            g: who.groups.clone(),
            e: expires,
            c: now,
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mac = b64.encode(self.mac(format!("token\0{payload}").as_bytes()));
        Ok(Credentials {
            secret_access_key: self.secret_of(&access_key_id),
            access_key_id,
            session_token: format!("{payload}.{mac}"),
            expires,
        })
    }

    /// The key record a request signed with temporary key `access_key_id` and carrying
    /// `token` is checked with (its secret is the session's).
    pub fn open(&self, access_key_id: &str, token: Option<&str>, now: i64) -> Result<KeyRecord, SessionError> {
        let token = token.ok_or(SessionError::Missing)?;
        let (payload, mac) = token.split_once('.').ok_or(SessionError::Invalid)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let given = b64.decode(mac).map_err(|_| SessionError::Invalid)?;
        let expected = self.mac(format!("token\0{payload}").as_bytes());
        if !super::sigv4::constant_time_eq(&given, &expected) {
            return Err(SessionError::Invalid);
        }
        let claims: Claims =
            b64.decode(payload).ok().and_then(|p| serde_json::from_slice(&p).ok()).ok_or(SessionError::Invalid)?;
        if claims.k != access_key_id {
            return Err(SessionError::Invalid);
        }
        if now >= claims.e {
            return Err(SessionError::Expired);
        }
        Ok(KeyRecord {
            access_key: claims.n,
            secret: self.secret_of(access_key_id),
            name: claims.o.clone(),
            owner: claims.o,
            groups: claims.g,
            created: claims.c,
            expires: Some(claims.e),
            revoked: None,
        })
    }
}

fn random(n: usize, alphabet: &[u8]) -> Result<String, String> {
    super::store::random_chars(n, alphabet).map_err(|e| format!("cannot read /dev/urandom: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> KeyRecord {
        KeyRecord {
            access_key: "oidc:alice".into(),
            secret: String::new(),
            name: "alice".into(),
            owner: "alice".into(),
            groups: vec!["cmip6".into()],
            created: 0,
            expires: Some(2_000),
            revoked: None,
        }
    }

    #[test]
    fn a_session_opens_only_with_its_own_token_and_until_it_expires() {
        let s = Sessions::new(&SessionConfig::default()).unwrap();
        let c = s.mint(&login(), 1_000, 1_500).unwrap();
        assert!(c.access_key_id.starts_with(PREFIX) && c.access_key_id.len() == 20);
        // no access key can look like one: `zarrgate keys create` makes ZG + base32
        assert!(!"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".contains(&PREFIX[2..3]));
        let k = s.open(&c.access_key_id, Some(&c.session_token), 1_100).unwrap();
        assert_eq!(
            (k.access_key.as_str(), k.groups.clone(), k.secret.clone()),
            ("oidc:alice", vec!["cmip6".to_string()], c.secret_access_key.clone())
        );
        assert_eq!(s.open(&c.access_key_id, Some(&c.session_token), 1_500).unwrap_err(), SessionError::Expired);
        assert_eq!(s.open(&c.access_key_id, None, 1_100).unwrap_err(), SessionError::Missing);
        // Another key's token, a token with more groups, another gateway's token: refused.
        let other = s.mint(&login(), 1_000, 1_500).unwrap();
        assert_eq!(s.open(&c.access_key_id, Some(&other.session_token), 1_100).unwrap_err(), SessionError::Invalid);
        let (payload, mac) = c.session_token.split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = String::from_utf8(b64.decode(payload).unwrap()).unwrap().replace("cmip6", "admin");
        let forged = format!("{}.{mac}", b64.encode(forged));
        assert_eq!(s.open(&c.access_key_id, Some(&forged), 1_100).unwrap_err(), SessionError::Invalid);
        let elsewhere = Sessions::new(&SessionConfig::default()).unwrap();
        assert_eq!(elsewhere.open(&c.access_key_id, Some(&c.session_token), 1_100).unwrap_err(), SessionError::Invalid);
    }
}
