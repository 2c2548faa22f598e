//! Who is calling, as upstream must see it: the optional key map (`--key-map`, old key -> new
//! key, because 360dialog issues a new key when a number moves to Cloud), and the login tokens
//! of self-hosted On-Premise clients (`POST /v1/users/login`, then `Authorization: Bearer`),
//! each mapped to a configured API key. The map is re-read on SIGHUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::accounts::{Account, Accounts, AccountsError};
use crate::clock::epoch_ms;
use crate::db::{Database, DbError};
use crate::secret::{key_hash, same_secret};

/// The header 360dialog authenticates with.
pub const API_KEY_HEADER: &str = "d360-api-key";

/// How long a login token lives (On-Premise's default was 7 days).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, Clone, Deserialize)]
struct User {
    password_sha256: String,
    api_key: String,
}

/// The parsed `--key-map` file.
#[derive(Debug, Default, Clone)]
pub struct KeyMap {
    keys: HashMap<String, String>,
    users: HashMap<String, User>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyMapError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a JSON object of \"old key\": \"new key\" and \"user:<name>\": {{\"password_sha256\", \"api_key\"}} entries: {source}")]
    Shape {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Accounts(#[from] AccountsError),
}

impl KeyMap {
    pub fn load(path: &Path) -> Result<KeyMap, KeyMapError> {
        let bytes = std::fs::read(path).map_err(|source| KeyMapError::Read {
            path: path.to_owned(),
            source,
        })?;
        let shape = |source| KeyMapError::Shape {
            path: path.to_owned(),
            source,
        };
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(shape)?;
        let mut map = KeyMap::default();
        for (name, value) in entries {
            match name.strip_prefix("user:") {
                Some(user) => {
                    let user_entry: User = serde_json::from_value(value).map_err(shape)?;
                    map.users.insert(user.to_owned(), user_entry);
                }
                None => {
                    let new_key: String = serde_json::from_value(value).map_err(shape)?;
                    map.keys.insert(name, new_key);
                }
            }
        }
        Ok(map)
    }
}

/// A login that failed, or could not happen.
#[derive(Debug)]
pub enum LoginRefused {
    /// No `user:` entries are configured: login cannot work here at all.
    NoUsers,
    /// Missing or malformed Basic credentials, unknown user or wrong password.
    BadCredentials,
    /// The session could not be stored.
    Storage(DbError),
}

/// A request whose credentials cannot be turned into an API key.
#[derive(Debug)]
pub enum Unauthenticated {
    /// No such login token, or it expired or its user left the key map.
    UnknownToken,
    /// Graph dialect: no account in `--accounts` for what the client presented.
    NoAccount,
    /// The session store could not be asked.
    Storage(DbError),
}

/// Login sessions live in the database (any replica accepts a token another one issued), as
/// the SHA-256 of the token and the key map user: the API key itself stays in the key map.
pub struct Auth {
    path: Option<PathBuf>,
    map: RwLock<Arc<KeyMap>>,
    /// Graph dialect: `--accounts` (then `path` is that file, and the key map stays empty).
    accounts: Option<RwLock<Arc<Accounts>>>,
    accounts_path: Option<PathBuf>,
    /// The Graph version of accounts that name none.
    graph_version: String,
    db: Database,
}

impl Auth {
    /// waba-v2: the key map, if any.
    pub fn new(path: Option<PathBuf>, db: Database) -> Result<Auth, KeyMapError> {
        let map = match &path {
            Some(path) => KeyMap::load(path)?,
            None => KeyMap::default(),
        };
        Ok(Auth {
            path,
            map: RwLock::new(Arc::new(map)),
            accounts: None,
            accounts_path: None,
            graph_version: crate::accounts::DEFAULT_GRAPH_VERSION.to_owned(),
            db,
        })
    }

    /// Graph dialect: every client is identified as one account of `path` (none: no client
    /// is, and each request is answered 401).
    /// Accounts naming no `graph_version` take `graph_version`.
    pub fn with_accounts(
        path: Option<PathBuf>,
        graph_version: String,
        db: Database,
    ) -> Result<Auth, KeyMapError> {
        let accounts = match &path {
            Some(path) => Accounts::load_defaulting(path, &graph_version)?,
            None => Accounts::default(),
        };
        Ok(Auth {
            path: None,
            map: RwLock::new(Arc::new(KeyMap::default())),
            accounts: Some(RwLock::new(Arc::new(accounts))),
            accounts_path: path,
            graph_version,
            db,
        })
    }

    /// Re-reads the key map (or accounts) file; on error the old one stays in force.
    pub fn reload(&self) -> Result<(), KeyMapError> {
        if let Some(path) = &self.path {
            let fresh = KeyMap::load(path)?;
            *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        }
        if let (Some(path), Some(accounts)) = (&self.accounts_path, &self.accounts) {
            let fresh = Accounts::load_defaulting(path, &self.graph_version)?;
            *accounts.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        }
        Ok(())
    }

    fn map(&self) -> Arc<KeyMap> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Graph dialect: the accounts in force (None in the waba-v2 dialect).
    pub fn accounts(&self) -> Option<Arc<Accounts>> {
        self.accounts
            .as_ref()
            .map(|a| a.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Graph dialect: the account of the request's API key (`D360-API-KEY`, or a bearer token
    /// that is one) or of its login token. The client's own credentials never go upstream:
    /// they are taken out of `headers`, and the account's token goes instead.
    async fn identify(
        &self,
        accounts: &Accounts,
        headers: &mut HeaderMap,
    ) -> Result<Arc<Account>, Unauthenticated> {
        let key = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok());
        let account = match (key, bearer(headers)) {
            (Some(key), _) => accounts.by_api_key(key).ok_or(Unauthenticated::NoAccount)?,
            (None, Some(token)) => match accounts.by_api_key(token) {
                Some(account) => account,
                None => accounts
                    .by_user(&self.session_user(token).await?)
                    .ok_or(Unauthenticated::UnknownToken)?,
            },
            (None, None) => return Err(Unauthenticated::NoAccount),
        };
        headers.remove(API_KEY_HEADER);
        headers.remove(header::AUTHORIZATION);
        Ok(account)
    }

    /// The user a login token belongs to, while its session lasts.
    async fn session_user(&self, token: &str) -> Result<String, Unauthenticated> {
        self.db
            .session_user(&key_hash(token), epoch_ms(SystemTime::now()))
            .await
            .map_err(Unauthenticated::Storage)?
            .ok_or(Unauthenticated::UnknownToken)
    }

    /// Rewrites the upstream headers in place: a mapped `D360-API-KEY` is replaced; without
    /// one, a login token (`Authorization: Bearer`) becomes its API key. Headers with neither
    /// pass as they are (upstream answers 401, which is translated).
    ///
    /// In the Graph dialect the request is identified as an account instead (returned).
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<Arc<Account>>, Unauthenticated> {
        if let Some(accounts) = self.accounts() {
            return self.identify(&accounts, headers).await.map(Some);
        }
        let map = self.map();
        if let Some(key) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
            if let Some(new_key) = map.keys.get(key) {
                let value =
                    HeaderValue::from_str(new_key).map_err(|_| Unauthenticated::UnknownToken)?;
                headers.insert(API_KEY_HEADER, value);
            }
            return Ok(None);
        }
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let user = self.session_user(token).await?;
        let api_key = map
            .users
            .get(&user)
            .map(|u| u.api_key.as_str())
            .ok_or(Unauthenticated::UnknownToken)?;
        let value = HeaderValue::from_str(api_key).map_err(|_| Unauthenticated::UnknownToken)?;
        headers.remove(header::AUTHORIZATION);
        headers.insert(API_KEY_HEADER, value);
        Ok(None)
    }

    /// Checks Basic credentials against the `user:` entries and opens a session.
    /// Returns the token and when it expires.
    pub async fn login(&self, headers: &HeaderMap) -> Result<(String, SystemTime), LoginRefused> {
        let map = self.map();
        let accounts = self.accounts();
        let has_users = match &accounts {
            Some(accounts) => accounts.has_users(),
            None => !map.users.is_empty(),
        };
        if !has_users {
            return Err(LoginRefused::NoUsers);
        }
        let (name, password) = basic(headers).ok_or(LoginRefused::BadCredentials)?;
        let expected = match &accounts {
            Some(accounts) => accounts.password_sha256(&name),
            None => map.users.get(&name).map(|u| u.password_sha256.trim()),
        }
        .ok_or(LoginRefused::BadCredentials)?;
        if !same_secret(
            key_hash(&password).as_bytes(),
            expected.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(LoginRefused::BadCredentials);
        }
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let expires = SystemTime::now() + TOKEN_LIFETIME;
        self.db
            .create_session(&key_hash(&token), &name, epoch_ms(expires))
            .await
            .map_err(LoginRefused::Storage)?;
        Ok((token, expires))
    }

    /// Ends the session of the request's bearer token; whether there was one.
    pub async fn logout(&self, headers: &HeaderMap) -> Result<bool, DbError> {
        match bearer(headers) {
            Some(token) => self.db.delete_session(&key_hash(token)).await,
            None => Ok(false),
        }
    }
}

/// The token of `Authorization: Bearer <token>`: the scheme in any case, then any run of
/// spaces (RFC 9110, 11.1 and 11.4).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user and password of `Authorization: Basic <base64 user:password>`.
pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn database() -> Database {
        let path = std::env::temp_dir().join(format!("auth-{}.sqlite3", uuid::Uuid::new_v4()));
        Database::open(&crate::db::DatabaseUrl::Sqlite(path), None)
            .await
            .unwrap()
    }

    async fn auth_with(json: &str) -> Auth {
        let path = std::env::temp_dir().join(format!("keymap-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, json).unwrap();
        Auth::new(Some(path), database().await).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn mapped_keys_are_replaced_and_others_pass() {
        let auth = auth_with(r#"{"old": "new"}"#).await;
        let mut mapped = headers(&[("D360-API-KEY", "old")]);
        auth.authenticate(&mut mapped).await.unwrap();
        assert_eq!(mapped["d360-api-key"], "new");
        let mut other = headers(&[("D360-API-KEY", "other")]);
        auth.authenticate(&mut other).await.unwrap();
        assert_eq!(other["d360-api-key"], "other");
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case_with_any_run_of_spaces() {
        for value in ["Bearer tok", "bearer tok", "BEARER   tok", "bEaReR tok  "] {
            assert_eq!(
                bearer(&headers(&[("authorization", value)])),
                Some("tok"),
                "{value}"
            );
        }
        for value in ["Bearer", "Bearer ", "Basic tok", "Bearertok"] {
            assert_eq!(
                bearer(&headers(&[("authorization", value)])),
                None,
                "{value}"
            );
        }
    }

    #[tokio::test]
    async fn login_then_bearer_becomes_the_api_key_until_logout() {
        // sha256("pw") = 30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4
        let auth = auth_with(
            r#"{"user:admin": {"password_sha256": "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4", "api_key": "K1"}}"#,
        )
        .await;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:pw")
        );
        let (token, _) = auth
            .login(&headers(&[("authorization", &basic)]))
            .await
            .unwrap();
        let bearer = format!("Bearer {token}");
        let mut h = headers(&[("authorization", &bearer)]);
        auth.authenticate(&mut h).await.unwrap();
        assert_eq!(h["d360-api-key"], "K1");
        assert!(h.get("authorization").is_none());
        assert!(auth
            .logout(&headers(&[("authorization", &bearer)]))
            .await
            .unwrap());
        assert!(matches!(
            auth.authenticate(&mut headers(&[("authorization", &bearer)]))
                .await,
            Err(Unauthenticated::UnknownToken)
        ));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:nope")
        );
        assert!(matches!(
            auth.login(&headers(&[("authorization", &wrong)])).await,
            Err(LoginRefused::BadCredentials)
        ));
    }

    #[tokio::test]
    async fn reload_keeps_the_old_map_when_the_file_breaks() {
        let path = std::env::temp_dir().join(format!("keymap-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, r#"{"a": "b"}"#).unwrap();
        let auth = Auth::new(Some(path.clone()), database().await).unwrap();
        std::fs::write(&path, "not json").unwrap();
        assert!(auth.reload().is_err());
        let mut h = headers(&[("D360-API-KEY", "a")]);
        auth.authenticate(&mut h).await.unwrap();
        assert_eq!(h["d360-api-key"], "b");
    }
}
