//! The console's shell (`/admin`): who may see it, what it shows, and replays from it. The
//! page itself is rendered by [`crate::console`].
//!
//! It exists only with `--admin-token`. A browser signs in with the token: as the password of
//! its own Basic prompt, or through the form, which sets an `HttpOnly`, `SameSite=Strict`
//! cookie (an HMAC of its issue time under the token, so every replica accepts it and nothing
//! is stored). A replay is a POST carrying a form token derived the same way.

use std::collections::HashMap;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::Reply;
use crate::body::full;
use crate::clock::now_ms;
use crate::console::{self, Count, View};
use crate::error::ProxyError;
use crate::handlers::AppState;
use crate::relay::ChannelView;
use crate::secret::{hmac_hex, same_secret};

const COOKIE: &str = "waba_console";
/// How long a console sign-in lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
use crate::metrics::RECENT;
/// Dead letters per console page.
const DEAD_PER_PAGE: usize = 20;

/// Takes a snapshot for the console (the server calls it every half minute).
pub fn snapshot_console(state: &AppState) {
    let channels = state.relay.channel_views();
    let text = state.metrics.render(None, &channels);
    state.console.baseline(counters(&text, &channels));
}

/// A signed-in browser (or operator tool) and the form token its replays carry.
struct Session {
    csrf: String,
}

/// The session of a request: the admin token as a bearer or Basic password, or the console
/// cookie. None without `--admin-token` or without valid credentials.
fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = state.config.admin_token.as_deref()?;
    let csrf = |scope: &str| hmac_hex(token.as_bytes(), format!("csrf:{scope}").as_bytes());
    if let Some(given) = crate::auth::bearer(headers) {
        if same_secret(given.as_bytes(), token.as_bytes()) {
            return Some(Session {
                csrf: csrf("bearer"),
            });
        }
    }
    if let Some((_, password)) = crate::auth::basic(headers) {
        if same_secret(password.as_bytes(), token.as_bytes()) {
            return Some(Session {
                csrf: csrf("basic"),
            });
        }
    }
    let cookie = cookie(headers, COOKIE)?;
    let (issued, signature) = cookie.split_once('.')?;
    let expected = hmac_hex(token.as_bytes(), format!("console:{issued}").as_bytes());
    let issued_ms: i64 = issued.parse().ok()?;
    let fresh = now_ms().saturating_sub(issued_ms) < SESSION.as_millis() as i64;
    (fresh && same_secret(signature.as_bytes(), expected.as_bytes()))
        .then(|| Session { csrf: csrf(issued) })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// An HTML answer with the console's security headers.
fn html(status: StatusCode, body: String) -> Response<crate::body::ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    response
}

fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn see_other(location: &'static str) -> Response<crate::body::ProxyBody> {
    let mut response = html(StatusCode::SEE_OTHER, String::new());
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    response
}

fn not_found() -> ProxyError {
    ProxyError::Rejected(crate::translate::errors::OnPremError::new(
        404,
        1006,
        "no such endpoint (the console needs --admin-token)",
    ))
}

/// Asks for the token: the browser's own Basic prompt, and the sign-in form as its page.
fn sign_in(message: Option<&str>) -> Reply {
    let mut response = html(StatusCode::UNAUTHORIZED, console::sign_in(message));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"waba-onprem-proxy console\", charset=\"UTF-8\""),
    );
    Reply::Stream(response)
}

/// `GET /admin/console.css`.
pub(super) fn css(state: &AppState) -> Result<Reply, ProxyError> {
    state.config.admin_token.as_ref().ok_or_else(not_found)?;
    let mut response = Response::new(full(console::CSS));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    secure(response.headers_mut());
    Ok(Reply::Stream(response))
}

/// `GET /admin/login`: the sign-in form alone, without the Basic challenge (which makes a
/// browser prompt instead).
pub(super) fn login_form(state: &AppState) -> Result<Reply, ProxyError> {
    state.config.admin_token.as_ref().ok_or_else(not_found)?;
    Ok(Reply::Stream(html(StatusCode::OK, console::sign_in(None))))
}

/// `POST /admin/login` (form: `token`): sets the console cookie.
pub(super) fn login(state: &AppState, body: &[u8]) -> Result<Reply, ProxyError> {
    let token = state.config.admin_token.as_deref().ok_or_else(not_found)?;
    let given = form(body, "token").unwrap_or_default();
    if !same_secret(given.as_bytes(), token.as_bytes()) {
        // The form again, without the Basic challenge (a prompt would cover the form).
        return Ok(Reply::Stream(html(
            StatusCode::UNAUTHORIZED,
            console::sign_in(Some("That is not the admin token.")),
        )));
    }
    let issued = now_ms().to_string();
    let signature = hmac_hex(token.as_bytes(), format!("console:{issued}").as_bytes());
    let mut response = see_other("/admin");
    let cookie = format!(
        "{COOKIE}={issued}.{signature}; HttpOnly; SameSite=Strict; Path=/admin; Max-Age={}",
        SESSION.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(Reply::Stream(response))
}

fn form(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `POST /admin/console/replay` (form: `id`, `csrf`).
pub(super) async fn replay(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ProxyError> {
    state.config.admin_token.as_ref().ok_or_else(not_found)?;
    let Some(session) = session(state, headers) else {
        return Ok(sign_in(None));
    };
    let csrf = form(body, "csrf").unwrap_or_default();
    if !same_secret(csrf.as_bytes(), session.csrf.as_bytes()) {
        return Ok(Reply::Stream(html(
            StatusCode::FORBIDDEN,
            console::sign_in(Some("The form expired; reload the console and try again.")),
        )));
    }
    let id = form(body, "id").and_then(|id| id.parse::<i64>().ok());
    if let Some(id) = id {
        if state
            .relay
            .db
            .replay(id, now_ms())
            .await
            .map_err(ProxyError::Storage)?
        {
            state.relay.wake();
        }
    }
    Ok(Reply::Stream(see_other("/admin#dead")))
}

/// `GET /admin[?after=<dead-letter id>]`.
pub(super) async fn page(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Reply, ProxyError> {
    state.config.admin_token.as_ref().ok_or_else(not_found)?;
    let Some(session) = session(state, headers) else {
        return Ok(sign_in(None));
    };
    let after = query
        .and_then(|q| form(q.as_bytes(), "after"))
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(0);
    let db = &state.relay.db;
    let stats = db.stats(now_ms()).await.map_err(ProxyError::Storage)?;
    let dead = db
        .dead_page(after, DEAD_PER_PAGE)
        .await
        .map_err(ProxyError::Storage)?;
    let channels = state.relay.channel_views();
    let text = state.metrics.render(Some(&stats), &channels);
    let now = counters(&text, &channels);
    let (baseline, window) = state.console.baseline(now.clone());
    let recent = |key: &str| {
        now.get(key).copied().unwrap_or(0.0) - baseline.get(key).copied().unwrap_or(0.0)
    };
    let minutes = (window.as_secs_f64() / 60.0).max(1.0 / 60.0);
    let counts = |prefix: &str| -> Vec<Count> {
        let mut counts: Vec<Count> = now
            .iter()
            .filter_map(|(key, total)| {
                key.strip_prefix(prefix).map(|label| Count {
                    label: label.to_owned(),
                    total: *total,
                    recent: recent(key),
                })
            })
            .collect();
        counts.sort_by(|a, b| a.label.cmp(&b.label));
        counts
    };
    let report = state.readiness().map(|r| r.report()).unwrap_or_default();
    let view = View {
        version: state.config.meta.version.clone(),
        dialect: match state.config.dialect {
            crate::config::Dialect::Graph => "graph",
            crate::config::Dialect::WabaV2 => "waba-v2",
        },
        dry_run: state.config.dry_run,
        recent: if window >= RECENT {
            "last 5 min".to_owned()
        } else {
            format!("last {} s", window.as_secs())
        },
        traffic: counts("requests "),
        errors: counts("errors "),
        latency: latency(&text),
        readiness: console::Readiness {
            routes: report.requests.into_iter().collect(),
            refused: report.refused.into_iter().collect(),
            dropped: report
                .dropped_fields
                .iter()
                .map(|(field, n)| {
                    let example = report
                        .dropped_examples
                        .get(field)
                        .cloned()
                        .unwrap_or_default();
                    (field.clone(), *n, example)
                })
                .collect(),
        },
        outbox: console::Outbox {
            pending: stats.pending,
            delivered: stats.delivered,
            dead: stats.dead,
            oldest_pending_secs: stats.oldest_pending_age_ms.unwrap_or(0).max(0) as f64 / 1000.0,
        },
        channels: channels
            .iter()
            .map(|c| console::Channel {
                name: c.channel.clone(),
                queued: c.queued,
                in_flight: c.in_flight,
                circuit: c.circuit.to_owned(),
                failures_in_a_row: c.failures_in_a_row,
                per_minute: recent(&delivered_key(&c.channel)) / minutes,
                last_error: c.last_error.clone(),
            })
            .collect(),
        dead_next: (dead.len() == DEAD_PER_PAGE)
            .then(|| dead.last().map(|d| d.id))
            .flatten(),
        dead: dead
            .into_iter()
            .map(|d| console::Dead {
                id: d.id,
                channel: d.channel,
                reason: d.reason,
                attempts: d.attempts,
                died_at: time::OffsetDateTime::from_unix_timestamp(d.died_at / 1000)
                    .map(|t| {
                        format!(
                            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                            t.year(),
                            u8::from(t.month()),
                            t.day(),
                            t.hour(),
                            t.minute(),
                            t.second()
                        )
                    })
                    .unwrap_or_default(),
                payload: serde_json::to_string_pretty(&d.payload).unwrap_or_default(),
            })
            .collect(),
        dead_after: after,
        csrf: session.csrf,
    };
    Ok(Reply::Stream(html(StatusCode::OK, console::render(&view))))
}

/// The key of a channel's delivered count among the [`counters`].
fn delivered_key(channel: &str) -> String {
    format!("delivered {channel}")
}

/// The counters the console shows: from the metrics text `requests <route> <status>` and
/// `errors <code>`, and each channel's deliveries, with their values.
fn counters(text: &str, channels: &[ChannelView]) -> HashMap<String, f64> {
    let mut counters: HashMap<String, f64> = channels
        .iter()
        .map(|view| (delivered_key(&view.channel), view.delivered as f64))
        .collect();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(labels) = series.strip_prefix("waba_proxy_requests_total{") {
            let route = label(labels, "route").unwrap_or_default();
            let status = label(labels, "status").unwrap_or_default();
            counters.insert(format!("requests {route} {status}"), value);
        } else if let Some(labels) = series.strip_prefix("waba_proxy_errors_total{") {
            counters.insert(
                format!("errors {}", label(labels, "code").unwrap_or_default()),
                value,
            );
        }
    }
    counters
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The upstream latency histogram, per bucket (the text gives cumulative counts).
fn latency(text: &str) -> Vec<(f64, u64)> {
    let mut cumulative = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("waba_proxy_upstream_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let bound = match label(labels, "le") {
            Some("+Inf") => f64::INFINITY,
            Some(le) => le.parse().unwrap_or(f64::INFINITY),
            None => continue,
        };
        cumulative.push((bound, value.parse::<f64>().unwrap_or(0.0) as u64));
    }
    let mut previous = 0;
    cumulative
        .into_iter()
        .map(|(bound, total)| {
            let own = total.saturating_sub(previous);
            previous = total;
            (bound, own)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_buckets_are_read_from_the_metrics_text() {
        let text = "waba_proxy_requests_total{route=\"send_message\",status=\"201\"} 3\n\
                    waba_proxy_errors_total{code=\"1005\"} 2\n\
                    waba_proxy_upstream_seconds_bucket{le=\"0.001\"} 1\n\
                    waba_proxy_upstream_seconds_bucket{le=\"0.002\"} 4\n\
                    waba_proxy_upstream_seconds_bucket{le=\"+Inf\"} 4\n";
        let c = counters(text, &[]);
        assert_eq!(c["requests send_message 201"], 3.0);
        assert_eq!(c["errors 1005"], 2.0);
        assert_eq!(latency(text), [(0.001, 1), (0.002, 3), (f64::INFINITY, 0)]);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; waba_console=9.abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("9.abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
