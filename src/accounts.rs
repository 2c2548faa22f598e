//! `--accounts FILE`: in the Graph dialect, which Meta account an On-Premise client acts for.
//!
//! The client presents what it always presented (its API key, or a `/v1/users/login` user and
//! then the login token); the file maps that to a Graph account: the phone-number id, the WABA
//! id, the system-user access token (inline, from an environment variable or from a file, so a
//! secret need not sit in the file), the Graph version, and the Meta app's id, secret and
//! webhook verify token. Re-read on SIGHUP, like the key map.
//!
//! Every id is checked here, once, when the file is read: only digits ever reach an upstream
//! path, because the access token goes along with every request.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::HeaderValue;
use serde::Deserialize;

use crate::secret::key_hash;

/// The Graph version used when an account names none.
pub const DEFAULT_GRAPH_VERSION: &str = "v23.0";

/// One Meta account (one phone number). Its `Debug` output shows no secret.
pub struct Account {
    /// A label for logs and the operator (defaults to the phone-number id).
    pub name: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub graph_version: String,
    pub app_id: Option<String>,
    access_token: String,
    app_secret: Option<String>,
    verify_token: Option<String>,
    /// Who owns this account's documents (settings, webhook channel): the same however the
    /// client authenticates.
    owner: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("phone_number_id", &self.phone_number_id)
            .field("waba_id", &self.waba_id)
            .field("graph_version", &self.graph_version)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The system-user access token (never logged).
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// `Authorization: Bearer <token>` (or `OAuth <token>` for Graph's upload sessions).
    pub fn authorization(&self, scheme: &str) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("{scheme} {}", self.access_token)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The Meta app's secret, which signs its webhooks.
    pub fn app_secret(&self) -> Option<&str> {
        self.app_secret.as_deref()
    }

    /// The token Meta's dashboard sends when the app's callback URL is verified.
    pub fn verify_token(&self) -> Option<&str> {
        self.verify_token.as_deref()
    }

    /// An account whose ids are placeholders (`{phone-number-id}`...): for showing where a
    /// call would go (`translate --upstream-dialect graph`), never for sending.
    pub fn placeholder(graph_version: &str) -> Account {
        Account {
            name: "placeholder".to_owned(),
            phone_number_id: "{phone-number-id}".to_owned(),
            waba_id: Some("{waba-id}".to_owned()),
            graph_version: graph_version.to_owned(),
            app_id: Some("{app-id}".to_owned()),
            access_token: String::new(),
            app_secret: None,
            verify_token: None,
            owner: String::new(),
        }
    }

    /// The key this account's documents and webhook channel are filed under.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// A password entry, as in the key map: `{"password_sha256": "<hex>"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    password_sha256: String,
}

/// One entry as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    users: HashMap<String, User>,
    phone_number_id: String,
    waba_id: Option<String>,
    access_token: Option<String>,
    access_token_env: Option<String>,
    access_token_file: Option<PathBuf>,
    graph_version: Option<String>,
    app_id: Option<String>,
    app_secret: Option<String>,
    app_secret_env: Option<String>,
    app_secret_file: Option<PathBuf>,
    verify_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    accounts: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only where and what kind of mistake: serde's own message can quote a value, and the
    /// file holds secrets.
    #[error("{path} is not an accounts file ({{\"accounts\": [...]}}, see the README): {kind} at line {line}, column {column}")]
    Shape {
        path: PathBuf,
        kind: &'static str,
        line: usize,
        column: usize,
    },
    #[error("{path}: account {account}: {reason}")]
    Invalid {
        path: PathBuf,
        account: String,
        reason: String,
    },
}

/// The parsed accounts file.
#[derive(Debug, Default)]
pub struct Accounts {
    accounts: Vec<Arc<Account>>,
    /// SHA-256 of an API key -> account: looked up by hash, so no lookup compares raw keys.
    by_key: HashMap<String, usize>,
    users: HashMap<String, (String, usize)>,
    by_phone: HashMap<String, usize>,
}

impl Accounts {
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        Accounts::load_defaulting(path, DEFAULT_GRAPH_VERSION)
    }

    /// As [`Accounts::load`], accounts naming no `graph_version` taking `version`.
    pub fn load_defaulting(path: &Path, version: &str) -> Result<Accounts, AccountsError> {
        let bytes = std::fs::read(path).map_err(|source| AccountsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: File = serde_json::from_slice(&bytes).map_err(|e| AccountsError::Shape {
            path: path.to_owned(),
            kind: match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "not valid JSON"
                }
                _ => "a field is missing, unknown or of the wrong type",
            },
            line: e.line(),
            column: e.column(),
        })?;
        let mut entries = file.accounts;
        for entry in &mut entries {
            entry
                .graph_version
                .get_or_insert_with(|| version.to_owned());
        }
        Accounts::from_entries(entries, |name| std::env::var(name).ok()).map_err(
            |(account, reason)| AccountsError::Invalid {
                path: path.to_owned(),
                account,
                reason,
            },
        )
    }

    /// The accounts of `entries`; `env` reads an environment variable. Errors name the account
    /// and what is wrong, never a secret's value.
    fn from_entries(
        entries: Vec<Entry>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Accounts, (String, String)> {
        let mut accounts = Accounts::default();
        for mut entry in entries {
            let label = entry
                .name
                .clone()
                .unwrap_or_else(|| entry.phone_number_id.clone());
            let index = accounts.accounts.len();
            let api_keys = std::mem::take(&mut entry.api_keys);
            let users = std::mem::take(&mut entry.users);
            let account = account(entry, &env).map_err(|r| (label.clone(), r))?;
            if accounts
                .by_phone
                .insert(account.phone_number_id.clone(), index)
                .is_some()
            {
                return Err((label, "phone_number_id appears in two accounts".into()));
            }
            for key in &api_keys {
                if key.is_empty() || accounts.by_key.insert(key_hash(key), index).is_some() {
                    return Err((
                        label,
                        "an api_keys entry is empty or in two accounts".into(),
                    ));
                }
            }
            for (name, user) in &users {
                let known = accounts.users.insert(
                    name.clone(),
                    (user.password_sha256.trim().to_owned(), index),
                );
                if known.is_some() {
                    return Err((label, format!("user {name} appears in two accounts")));
                }
            }
            accounts.accounts.push(Arc::new(account));
        }
        Ok(accounts)
    }

    /// The account an API key (sent as `D360-API-KEY`, or as a bearer token) stands for.
    pub fn by_api_key(&self, key: &str) -> Option<Arc<Account>> {
        self.by_key
            .get(&key_hash(key))
            .map(|&i| self.accounts[i].clone())
    }

    /// The account of a login user.
    pub fn by_user(&self, user: &str) -> Option<Arc<Account>> {
        self.users.get(user).map(|(_, i)| self.accounts[*i].clone())
    }

    /// The SHA-256 (hex) of a login user's password.
    pub fn password_sha256(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(|(hash, _)| hash.as_str())
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The account a webhook's `metadata.phone_number_id` names.
    pub fn by_phone_number_id(&self, phone_number_id: &str) -> Option<Arc<Account>> {
        self.by_phone
            .get(phone_number_id)
            .map(|&i| self.accounts[i].clone())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.accounts.iter()
    }
}

fn account(entry: Entry, env: &impl Fn(&str) -> Option<String>) -> Result<Account, String> {
    let ids = &entry;
    digits("phone_number_id", &ids.phone_number_id)?;
    if let Some(waba_id) = &ids.waba_id {
        digits("waba_id", waba_id)?;
    }
    if let Some(app_id) = &ids.app_id {
        digits("app_id", app_id)?;
    }
    let graph_version = ids
        .graph_version
        .clone()
        .unwrap_or_else(|| DEFAULT_GRAPH_VERSION.to_owned());
    if !is_graph_version(&graph_version) {
        return Err(format!(
            "graph_version must look like v23.0, not {graph_version:?}"
        ));
    }
    let access_token = secret(
        "access_token",
        &entry.access_token,
        &entry.access_token_env,
        &entry.access_token_file,
        env,
    )?
    .ok_or("one of access_token, access_token_env or access_token_file is required")?;
    // It travels as a header value: anything a header cannot hold is refused here, not on
    // the first request.
    if access_token.is_empty() || HeaderValue::from_str(&format!("Bearer {access_token}")).is_err()
    {
        return Err("the access token is empty or not a valid header value".into());
    }
    let app_secret = secret(
        "app_secret",
        &entry.app_secret,
        &entry.app_secret_env,
        &entry.app_secret_file,
        env,
    )?;
    // HMAC under an empty key is one anyone can compute: such a secret would let anyone sign.
    if app_secret.as_deref().is_some_and(str::is_empty) {
        return Err("app_secret is empty".into());
    }
    let phone_number_id = entry.phone_number_id;
    Ok(Account {
        name: entry.name.unwrap_or_else(|| phone_number_id.clone()),
        owner: format!("graph:{phone_number_id}"),
        phone_number_id,
        waba_id: entry.waba_id,
        graph_version,
        app_id: entry.app_id,
        access_token,
        app_secret,
        verify_token: entry.verify_token.filter(|t| !t.is_empty()),
    })
}

/// A secret given inline, by environment variable, or by file (trimmed): at most one way.
fn secret(
    field: &str,
    inline: &Option<String>,
    variable: &Option<String>,
    file: &Option<PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    match (inline, variable, file) {
        (Some(value), None, None) => Ok(Some(value.trim().to_owned())),
        (None, Some(name), None) => env(name)
            .map(|v| Some(v.trim().to_owned()))
            .ok_or_else(|| format!("{field}_env names {name}, which is not set")),
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(v.trim().to_owned()))
            .map_err(|e| format!("{field}_file {}: {e}", path.display())),
        (None, None, None) => Ok(None),
        _ => Err(format!(
            "give {field} one way only: {field}, {field}_env or {field}_file"
        )),
    }
}

fn digits(field: &str, value: &str) -> Result<(), String> {
    if !value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("{field} must be Meta's numeric id, not {value:?}"))
    }
}

/// `v<major>.<minor>`, as Graph names its versions.
pub fn is_graph_version(version: &str) -> bool {
    version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(json: serde_json::Value) -> Vec<Entry> {
        serde_json::from_value::<File>(json).unwrap().accounts
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_account_is_found_by_key_user_and_phone_number_id() {
        let accounts = Accounts::from_entries(
            entries(serde_json::json!({"accounts": [{
                "api_keys": ["K1"], "users": {"admin": {"password_sha256": "ab"}},
                "phone_number_id": "111", "waba_id": "222", "access_token": "T",
                "app_id": "333", "app_secret": "S", "verify_token": "V"
            }]})),
            no_env,
        )
        .unwrap();
        assert_eq!(accounts.by_api_key("K1").unwrap().phone_number_id, "111");
        assert_eq!(accounts.by_user("admin").unwrap().owner(), "graph:111");
        assert_eq!(
            accounts.by_phone_number_id("111").unwrap().graph_version,
            "v23.0"
        );
        assert!(accounts.by_api_key("K2").is_none());
        assert_eq!(accounts.password_sha256("admin"), Some("ab"));
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_show_in_debug() {
        let accounts = Accounts::from_entries(
            entries(serde_json::json!({"accounts": [{
                "phone_number_id": "111", "access_token_env": "TOKEN", "app_secret": "APPSECRET"
            }]})),
            |name| (name == "TOKEN").then(|| "EAAGsecret".to_owned()),
        )
        .unwrap();
        let account = accounts.by_phone_number_id("111").unwrap();
        assert_eq!(account.access_token(), "EAAGsecret");
        let shown = format!("{account:?} {accounts:?}");
        assert!(
            !shown.contains("EAAGsecret") && !shown.contains("APPSECRET"),
            "{shown}"
        );
    }

    #[test]
    fn ids_that_are_not_digits_and_bad_versions_are_refused() {
        for bad in [
            serde_json::json!({"phone_number_id": "1/../2", "access_token": "T"}),
            serde_json::json!({"phone_number_id": "1", "waba_id": "x", "access_token": "T"}),
            serde_json::json!({"phone_number_id": "1", "graph_version": "23", "access_token": "T"}),
            serde_json::json!({"phone_number_id": "1"}),
            serde_json::json!({"phone_number_id": "1", "access_token": "T", "access_token_env": "X"}),
            serde_json::json!({"phone_number_id": "1", "access_token": "a\nb"}),
            serde_json::json!({"phone_number_id": "1", "access_token_env": "UNSET"}),
            serde_json::json!({"phone_number_id": "1", "access_token": "T", "app_secret": " "}),
        ] {
            let result =
                Accounts::from_entries(entries(serde_json::json!({"accounts": [bad]})), no_env);
            assert!(result.is_err(), "{bad}");
        }
        let twice = serde_json::json!({"accounts": [
            {"phone_number_id": "1", "access_token": "T", "api_keys": ["K"]},
            {"phone_number_id": "2", "access_token": "T", "api_keys": ["K"]}
        ]});
        assert!(Accounts::from_entries(entries(twice), no_env).is_err());
    }

    #[test]
    fn a_misshapen_file_is_described_without_quoting_its_values() {
        let path = std::env::temp_dir().join(format!("accounts-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            r#"{"accounts": [{"api_keys": "SECRET-KEY-1", "phone_number_id": "1"}]}"#,
        )
        .unwrap();
        let error = Accounts::load(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(!error.contains("SECRET-KEY-1"), "{error}");
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn graph_versions_look_like_v23_0() {
        assert!(is_graph_version("v23.0") && is_graph_version("v9.12"));
        for bad in ["23.0", "v23", "v23.x", "v.1", "v1./", "v1.0/x"] {
            assert!(!is_graph_version(bad), "{bad}");
        }
    }
}
