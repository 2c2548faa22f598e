//! The Graph dialect: where a Cloud call goes on Meta's Graph API, and with which credential.
//!
//! The translation core speaks waba-v2's paths (`/messages`, `/media`, `/{media-id}`,
//! `/whatsapp_business_profile`, `/uploads`, `/v1/configs/templates`), which carry no
//! version or phone-number id. Graph puts both in the path, and the token of the account goes
//! along, so this mapping is a closed list: a path not on it is refused, never forwarded.
//! Pure: no I/O, tested by table.

use http::Method;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::accounts::Account;

/// How the account's token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <token>`: every Graph call.
    Bearer,
    /// `Authorization: OAuth <token>`: the upload step of a resumable upload session.
    OAuth,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::OAuth => "OAuth",
        }
    }
}

/// A Graph call: path and query under the Graph root, and how the token goes along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path_and_query: String,
    pub scheme: Scheme,
}

/// Why a call has no Graph counterpart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmapped {
    #[error("{0} has no counterpart on Meta's Graph API")]
    NotOnGraph(String),
    #[error("the account of phone number {phone_number_id} has no {field} in the accounts file, which {what} needs")]
    AccountLacks {
        phone_number_id: String,
        field: &'static str,
        what: &'static str,
    },
    #[error("{0} is not a Graph object id")]
    InvalidId(String),
}

/// The Graph call for a waba-v2-shaped `method relative` made for `account`.
pub fn target(account: &Account, method: &Method, relative: &str) -> Result<Target, Unmapped> {
    let (path, query) = match relative.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (relative, None),
    };
    let v = &account.graph_version;
    let phone = &account.phone_number_id;
    let with_query = |base: String| match query {
        Some(q) if !q.is_empty() => format!("{base}?{q}"),
        _ => base,
    };
    let bearer = |path_and_query: String| {
        Ok(Target {
            path_and_query,
            scheme: Scheme::Bearer,
        })
    };
    match path {
        "/messages" | "/media" | "/whatsapp_business_profile" => {
            bearer(with_query(format!("/{v}/{phone}{path}")))
        }
        "/uploads" => {
            let app = account.app_id.as_ref().ok_or(Unmapped::AccountLacks {
                phone_number_id: phone.clone(),
                field: "app_id",
                what: "a profile photo upload",
            })?;
            bearer(with_query(format!("/{v}/{app}/uploads")))
        }
        "/v1/configs/templates" => {
            let waba = waba(account, "template management")?;
            // 360dialog's listing takes `limit`, `offset`, `filters` and `sort`; Graph pages
            // with cursors, so only `limit` carries over, and a listing asks for 1,000 (as
            // 360dialog's default did) so one page holds a whole account's templates (Meta
            // allows 250 names per account).
            let limit = query
                .into_iter()
                .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
                .find(|(name, _)| name == "limit")
                .and_then(|(_, value)| value.parse::<u32>().ok());
            let base = format!("/{v}/{waba}/message_templates");
            bearer(if *method == Method::GET {
                format!("{base}?limit={}", limit.unwrap_or(1000))
            } else {
                base
            })
        }
        _ => {
            if let Some(name) = path.strip_prefix("/v1/configs/templates/") {
                let waba = waba(account, "template management")?;
                if *method != Method::DELETE || name.is_empty() || name.contains('/') {
                    return Err(Unmapped::NotOnGraph(format!("{method} {path}")));
                }
                // The route let through only a plain name; it is a query value here.
                let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                return bearer(format!(
                    "/{v}/{waba}/message_templates?name={}",
                    utf8_percent_encode(&name, NON_ALPHANUMERIC)
                ));
            }
            if let Some(session) = path.strip_prefix("/upload:") {
                // Graph's own session id from step one of the upload, sent back as it came,
                // if it is one (base64 and separators; never a path of its own).
                let plain = session
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=:.".contains(&b));
                if session.is_empty() || !plain || session.contains("..") {
                    return Err(Unmapped::InvalidId(format!("upload:{session}")));
                }
                return Ok(Target {
                    path_and_query: with_query(format!("/{v}/upload:{session}")),
                    scheme: Scheme::OAuth,
                });
            }
            if let Some(media_id) = path.strip_prefix('/') {
                if !media_id.is_empty()
                    && media_id.len() <= 32
                    && media_id.bytes().all(|b| b.is_ascii_digit())
                    && (*method == Method::GET || *method == Method::DELETE)
                {
                    // With the number it belongs to, Graph refuses another number's media.
                    return bearer(format!("/{v}/{media_id}?phone_number_id={phone}"));
                }
                if !media_id.contains('/') && (*method == Method::GET || *method == Method::DELETE)
                {
                    return Err(Unmapped::InvalidId(media_id.to_owned()));
                }
            }
            Err(Unmapped::NotOnGraph(format!("{method} {path}")))
        }
    }
}

fn waba<'a>(account: &'a Account, what: &'static str) -> Result<&'a str, Unmapped> {
    account
        .waba_id
        .as_deref()
        .ok_or_else(|| Unmapped::AccountLacks {
            phone_number_id: account.phone_number_id.clone(),
            field: "waba_id",
            what,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Accounts;

    fn account(extra: serde_json::Value) -> std::sync::Arc<Account> {
        let mut entry = serde_json::json!({
            "phone_number_id": "1065", "access_token": "T", "graph_version": "v21.0"
        });
        if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
            entry.extend(extra.clone());
        }
        let dir = std::env::temp_dir().join(format!("accounts-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, serde_json::json!({"accounts": [entry]}).to_string()).unwrap();
        let accounts = Accounts::load(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        accounts.by_phone_number_id("1065").unwrap()
    }

    #[test]
    fn every_waba_v2_path_has_its_graph_path() {
        let a = account(serde_json::json!({"waba_id": "2020", "app_id": "3030"}));
        let cases = [
            ("POST", "/messages", "/v21.0/1065/messages", Scheme::Bearer),
            ("POST", "/media", "/v21.0/1065/media", Scheme::Bearer),
            (
                "GET",
                "/4711",
                "/v21.0/4711?phone_number_id=1065",
                Scheme::Bearer,
            ),
            (
                "DELETE",
                "/4711",
                "/v21.0/4711?phone_number_id=1065",
                Scheme::Bearer,
            ),
            (
                "GET",
                "/whatsapp_business_profile?fields=about",
                "/v21.0/1065/whatsapp_business_profile?fields=about",
                Scheme::Bearer,
            ),
            (
                "POST",
                "/uploads?file_length=3&file_type=image/jpeg",
                "/v21.0/3030/uploads?file_length=3&file_type=image/jpeg",
                Scheme::Bearer,
            ),
            (
                "POST",
                "/upload:MTph?sig=x",
                "/v21.0/upload:MTph?sig=x",
                Scheme::OAuth,
            ),
            (
                "GET",
                "/v1/configs/templates?limit=5&offset=10",
                "/v21.0/2020/message_templates?limit=5",
                Scheme::Bearer,
            ),
            (
                "GET",
                "/v1/configs/templates",
                "/v21.0/2020/message_templates?limit=1000",
                Scheme::Bearer,
            ),
            (
                "POST",
                "/v1/configs/templates",
                "/v21.0/2020/message_templates",
                Scheme::Bearer,
            ),
            (
                "DELETE",
                "/v1/configs/templates/order_update",
                "/v21.0/2020/message_templates?name=order%5Fupdate",
                Scheme::Bearer,
            ),
        ];
        for (method, relative, expected, scheme) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let got = target(&a, &method, relative).unwrap();
            assert_eq!(got.path_and_query, expected, "{method} {relative}");
            assert_eq!(got.scheme, scheme, "{method} {relative}");
        }
    }

    #[test]
    fn anything_else_is_refused_not_forwarded() {
        let a = account(serde_json::json!({}));
        let refused = [
            ("POST", "/v1/configs/webhook"),
            ("GET", "/v1/settings/application"),
            ("GET", "/12/34"),
            ("POST", "/4711"),
            ("GET", "/me"),
            ("GET", "/1065%2Fmessages"),
            ("POST", "/upload:a/../../1065/messages"),
            ("POST", "/upload:"),
            ("POST", "/upload:%2e%2e"),
        ];
        for (method, relative) in refused {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                target(&a, &method, relative).is_err(),
                "{method} {relative}"
            );
        }
        // An account without the ids a call needs says which one is missing.
        let err = target(&a, &Method::POST, "/uploads?file_length=1").unwrap_err();
        assert!(err.to_string().contains("app_id"), "{err}");
        let err = target(&a, &Method::GET, "/v1/configs/templates").unwrap_err();
        assert!(err.to_string().contains("waba_id"), "{err}");
    }
}
