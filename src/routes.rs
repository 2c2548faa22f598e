//! The route table: (method, On-Premise path) -> [`Route`]. Pure; the one place that knows
//! which On-Premise endpoints exist and what becomes of each.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// What the proxy does with one On-Premise request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/messages` -> `POST /messages`.
    SendMessage,
    /// `PUT /v1/messages/{id}` -> `POST /messages` with `status: read`.
    MarkRead { message_id: String },
    /// `POST /v1/media` (raw bytes) -> `POST /media` (multipart), streamed.
    UploadMedia,
    /// `GET /v1/media/{id}` -> `GET /{id}`, then the bytes from the returned url, streamed.
    DownloadMedia { media_id: String },
    /// `DELETE /v1/media/{id}` -> `DELETE /{id}`.
    DeleteMedia { media_id: String },
    /// `/v1/settings/application/media/providers[/{name}]`: stored by the proxy per API key.
    MediaProviders { name: Option<String> },
    /// `GET /v1/settings/business/profile` -> `GET /whatsapp_business_profile?fields=...`.
    BusinessProfileGet,
    /// `POST /v1/settings/business/profile` -> `POST /whatsapp_business_profile`.
    BusinessProfilePost,
    /// `GET /v1/settings/profile/about` -> `GET /whatsapp_business_profile?fields=about`.
    AboutGet,
    /// `PATCH /v1/settings/profile/about` -> `POST /whatsapp_business_profile {about}`.
    AboutPatch,
    /// `GET /v1/settings/profile/photo[?format=link]`: the link, or the image streamed.
    PhotoGet { link: bool },
    /// `POST /v1/settings/profile/photo` (raw jpeg/png) -> Cloud's three-step resumable upload.
    PhotoPost,
    /// `DELETE /v1/settings/profile/photo`: Cloud cannot remove a photo.
    PhotoDelete,
    /// `GET/PATCH/DELETE /v1/settings/application`: stored by the proxy per API key.
    ApplicationSettings,
    /// `POST /v1/users/login` (Basic auth) -> a token mapped to an API key.
    Login,
    /// `POST /v1/users/logout`.
    Logout,
    /// `POST /cloud-webhooks/{channel}`: inbound Cloud webhooks for one channel (Graph
    /// dialect: for every number of a Meta app, told apart by phone-number id).
    InboundWebhook { channel: String },
    /// `GET /cloud-webhooks/{channel}?hub.mode=subscribe&...`: Meta's check of a callback URL.
    WebhookVerification,
    /// `GET/POST /v1/configs/webhook` (360dialog's): the client's legacy URL, kept by the proxy,
    /// which registers its own inbound URL upstream.
    WebhookConfig,
    /// `GET /admin/webhooks/stats`.
    AdminStats,
    /// `GET /admin/webhooks/dead`.
    AdminDead,
    /// `POST /admin/webhooks/dead/{id}/replay`.
    AdminReplay { dead_id: String },
    /// `GET /admin/dry-run/report`.
    AdminDryRunReport,
    /// `GET /admin`: the operator's console page (HTML).
    Console,
    /// `GET /admin/console.css`.
    ConsoleCss,
    /// `GET /admin/login`: the console's sign-in form; `POST`: signing in with it.
    ConsoleLogin,
    /// `POST /admin/console/replay`: a dead letter replayed from the console.
    ConsoleReplay,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /healthz`: the process is alive.
    Healthz,
    /// `GET /readyz`: upstream reachable, outbox writable, not shutting down.
    Readyz,
    /// `POST /v1/contacts`, answered locally.
    Contacts,
    /// `GET /v1/health`, answered locally.
    Health,
    /// Paths 360dialog serves in the same shape on both hosts (`/v1/configs/templates...`):
    /// forwarded to the same path upstream.
    PassThrough,
    /// On-Premise endpoints with no Cloud counterpart (README "Endpoints").
    NotOnCloud,
    /// Endpoints that do exist on Cloud but that this version of the proxy does not translate
    /// yet; answered with a clear 501 rather than forwarded half-translated.
    NotYetSupported,
    /// A path segment that is not valid UTF-8 once percent-decoded (ids never are).
    InvalidSegment,
    /// Anything else.
    NotFound,
}

impl Route {
    /// A fixed name per route, for metrics labels (never the path: ids would explode them).
    pub fn name(&self) -> &'static str {
        match self {
            Route::SendMessage => "send_message",
            Route::MarkRead { .. } => "mark_read",
            Route::UploadMedia => "upload_media",
            Route::DownloadMedia { .. } => "download_media",
            Route::DeleteMedia { .. } => "delete_media",
            Route::MediaProviders { .. } => "media_providers",
            Route::BusinessProfileGet => "business_profile_get",
            Route::BusinessProfilePost => "business_profile_post",
            Route::AboutGet => "about_get",
            Route::AboutPatch => "about_patch",
            Route::PhotoGet { .. } => "photo_get",
            Route::PhotoPost => "photo_post",
            Route::PhotoDelete => "photo_delete",
            Route::ApplicationSettings => "application_settings",
            Route::Login => "login",
            Route::Logout => "logout",
            Route::InboundWebhook { .. } => "inbound_webhook",
            Route::WebhookVerification => "webhook_verification",
            Route::WebhookConfig => "webhook_config",
            Route::AdminStats => "admin_stats",
            Route::AdminDead => "admin_dead",
            Route::AdminReplay { .. } => "admin_replay",
            Route::Metrics => "metrics",
            Route::AdminDryRunReport => "admin_dry_run_report",
            Route::Console => "console",
            Route::ConsoleCss => "console_css",
            Route::ConsoleLogin => "console_login",
            Route::ConsoleReplay => "console_replay",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Contacts => "contacts",
            Route::Health => "health",
            Route::PassThrough => "pass_through",
            Route::NotOnCloud => "not_on_cloud",
            Route::NotYetSupported => "not_yet_supported",
            Route::InvalidSegment => "invalid_segment",
            Route::NotFound => "not_found",
        }
    }
}

/// Who may call a route: part of the route, so dispatch never has to remember it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Anyone (probes, metrics, the local On-Premise answers that need no key).
    Anyone,
    /// An On-Premise client: its `D360-API-KEY` (mapped) or a login token becomes the key sent
    /// upstream.
    Client,
    /// The operator, with `Authorization: Bearer <--admin-token>`.
    Admin,
    /// Cloud, posting webhooks: the channel's secret is checked by the relay.
    Cloud,
}

/// What body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// None is read (what a client sends anyway is left to the connection).
    Nothing,
    /// A JSON body, read whole within `--max-body-bytes`.
    Json,
    /// Bytes streamed through as they come (media, webhooks with their own limit).
    Stream,
}

impl Route {
    /// Who may call this route.
    pub fn caller(&self) -> Caller {
        match self {
            Route::Login | Route::Logout => Caller::Anyone,
            Route::Healthz | Route::Readyz | Route::Metrics => Caller::Anyone,
            // The console signs its own visitors in (it answers with a sign-in page).
            Route::Console | Route::ConsoleCss | Route::ConsoleLogin | Route::ConsoleReplay => {
                Caller::Anyone
            }
            Route::InboundWebhook { .. } | Route::WebhookVerification => Caller::Cloud,
            Route::AdminStats
            | Route::AdminDead
            | Route::AdminReplay { .. }
            | Route::AdminDryRunReport => Caller::Admin,
            Route::SendMessage
            | Route::MarkRead { .. }
            | Route::UploadMedia
            | Route::DownloadMedia { .. }
            | Route::DeleteMedia { .. }
            | Route::MediaProviders { .. }
            | Route::BusinessProfileGet
            | Route::BusinessProfilePost
            | Route::AboutGet
            | Route::AboutPatch
            | Route::PhotoGet { .. }
            | Route::PhotoPost
            | Route::PhotoDelete
            | Route::ApplicationSettings
            | Route::WebhookConfig
            | Route::Contacts
            | Route::Health
            | Route::PassThrough
            | Route::NotOnCloud
            | Route::NotYetSupported
            | Route::InvalidSegment
            | Route::NotFound => Caller::Client,
        }
    }

    /// What body this route takes.
    pub fn intake(&self) -> Intake {
        match self {
            Route::UploadMedia | Route::PhotoPost | Route::InboundWebhook { .. } => Intake::Stream,
            Route::Login
            | Route::Logout
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::AdminStats
            | Route::AdminDead
            | Route::AdminReplay { .. }
            | Route::AdminDryRunReport
            | Route::Console
            | Route::ConsoleCss
            | Route::WebhookVerification
            | Route::DownloadMedia { .. }
            | Route::PhotoGet { link: false } => Intake::Nothing,
            Route::SendMessage
            | Route::ConsoleLogin
            | Route::ConsoleReplay
            | Route::MarkRead { .. }
            | Route::DeleteMedia { .. }
            | Route::MediaProviders { .. }
            | Route::BusinessProfileGet
            | Route::BusinessProfilePost
            | Route::AboutGet
            | Route::AboutPatch
            | Route::PhotoGet { link: true }
            | Route::PhotoDelete
            | Route::ApplicationSettings
            | Route::WebhookConfig
            | Route::Contacts
            | Route::Health
            | Route::PassThrough
            | Route::NotOnCloud
            | Route::NotYetSupported
            | Route::InvalidSegment
            | Route::NotFound => Intake::Json,
        }
    }
}

/// Matches the path (query ignored, a trailing `/` tolerated) against the table.
pub fn route(method: &str, path_and_query: &str) -> Route {
    let path = path_and_query.split('?').next().unwrap_or("");
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    // On the stack for the paths clients send (no route has more than 6 segments); a longer
    // one is collected on the heap and matched all the same.
    let mut held = [""; 16];
    let mut count = 0;
    let mut long = Vec::new();
    for segment in path.split('/').skip(1) {
        if count == held.len() {
            long = path.split('/').skip(1).collect();
            break;
        }
        held[count] = segment;
        count += 1;
    }
    let segments: &[&str] = if long.is_empty() {
        &held[..count]
    } else {
        &long
    };
    if segments
        .iter()
        .any(|s| percent_decode_str(s).decode_utf8().is_err())
    {
        return Route::InvalidSegment;
    }
    // `..` would let a pass-through path climb to any upstream endpoint with the client's key.
    if segments
        .iter()
        .any(|s| matches!(decode_segment(s).as_ref(), "." | ".."))
    {
        return Route::NotFound;
    }
    match (method, segments) {
        ("POST", ["v1", "messages"]) => Route::SendMessage,
        ("PUT", ["v1", "messages", id]) => match decode_segment(id) {
            id if is_message_id(&id) => Route::MarkRead {
                message_id: id.into_owned(),
            },
            _ => Route::NotFound,
        },
        ("POST", ["v1", "media"]) => Route::UploadMedia,
        // A media id becomes an upstream path (`GET /{id}`) sent with the client's key: only
        // what Cloud media ids are (digits) may get there.
        ("GET", ["v1", "media", id]) if is_media_id(id) => Route::DownloadMedia {
            media_id: (*id).to_owned(),
        },
        ("DELETE", ["v1", "media", id]) if is_media_id(id) => Route::DeleteMedia {
            media_id: (*id).to_owned(),
        },
        ("GET" | "POST" | "DELETE", ["v1", "settings", "application", "media", "providers"]) => {
            Route::MediaProviders { name: None }
        }
        ("DELETE", ["v1", "settings", "application", "media", "providers", name]) => {
            Route::MediaProviders {
                name: Some(decode_segment(name).into_owned()),
            }
        }
        ("GET", ["v1", "settings", "business", "profile"]) => Route::BusinessProfileGet,
        ("POST" | "PATCH", ["v1", "settings", "business", "profile"]) => Route::BusinessProfilePost,
        ("GET", ["v1", "settings", "profile", "about"]) => Route::AboutGet,
        ("PATCH" | "POST", ["v1", "settings", "profile", "about"]) => Route::AboutPatch,
        ("GET", ["v1", "settings", "profile", "photo"]) => Route::PhotoGet {
            link: query_has(path_and_query, "format", "link"),
        },
        ("POST", ["v1", "settings", "profile", "photo"]) => Route::PhotoPost,
        ("DELETE", ["v1", "settings", "profile", "photo"]) => Route::PhotoDelete,
        ("GET" | "PATCH" | "DELETE", ["v1", "settings", "application"]) => {
            Route::ApplicationSettings
        }
        ("POST", ["v1", "users", "login"]) => Route::Login,
        ("POST", ["v1", "users", "logout"]) => Route::Logout,
        ("POST", ["cloud-webhooks", channel]) => Route::InboundWebhook {
            channel: decode_segment(channel).into_owned(),
        },
        ("GET", ["cloud-webhooks", _] | ["cloud-webhooks"]) => Route::WebhookVerification,
        // A Meta app's callback may be given without a last segment.
        ("POST", ["cloud-webhooks"]) => Route::InboundWebhook {
            channel: String::new(),
        },
        ("GET" | "POST", ["v1", "configs", "webhook"]) => Route::WebhookConfig,
        ("GET", ["metrics"]) => Route::Metrics,
        ("GET", ["healthz"]) => Route::Healthz,
        ("GET", ["readyz"]) => Route::Readyz,
        ("GET", ["admin", "webhooks", "stats"]) => Route::AdminStats,
        ("GET", ["admin", "webhooks", "dead"]) => Route::AdminDead,
        ("GET", ["admin", "dry-run", "report"]) => Route::AdminDryRunReport,
        ("GET", ["admin"]) => Route::Console,
        ("GET", ["admin", "console.css"]) => Route::ConsoleCss,
        ("GET" | "POST", ["admin", "login"]) => Route::ConsoleLogin,
        ("POST", ["admin", "console", "replay"]) => Route::ConsoleReplay,
        ("POST", ["admin", "webhooks", "dead", id, "replay"]) => Route::AdminReplay {
            dead_id: (*id).to_owned(),
        },
        ("POST", ["v1", "contacts"]) => Route::Contacts,
        ("GET", ["v1", "health"]) => Route::Health,
        ("GET" | "POST" | "DELETE", ["v1", "configs", "templates", rest @ ..])
            if is_template_path(rest) =>
        {
            Route::PassThrough
        }
        (_, ["v1", "contacts", _, "block"]) => Route::NotOnCloud,
        (_, ["v1", area, ..]) if NOT_ON_CLOUD.contains(area) => Route::NotOnCloud,
        (_, ["v1", "settings", "backup" | "restore"]) => Route::NotOnCloud,
        (_, ["v1", "settings", ..])
        | (_, ["v1", "configs", "webhook"])
        | (_, ["v1", "users", ..]) => Route::NotYetSupported,
        _ => Route::NotFound,
    }
}

/// Cloud media ids are digits (`1037543291543636`); anything else could steer the key-bearing
/// `GET /{id}` elsewhere upstream (`..%2f..%2fadmin`).
fn is_media_id(segment: &str) -> bool {
    (1..=64).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_digit())
}

/// What may follow `/v1/configs/templates` on its way upstream: nothing, or one template name
/// (Meta: lowercase letters, digits and underscores, at most 512), given without encoding.
fn is_template_path(rest: &[&str]) -> bool {
    match rest {
        [] => true,
        [name] => {
            (1..=512).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        _ => false,
    }
}

/// A message id for mark-as-read (it goes into the JSON body, not a path): `wamid.` ids are
/// base64 and may carry `/`, `+` and `=`, so only control characters, spaces and absurd lengths
/// are refused.
fn is_message_id(id: &str) -> bool {
    (1..=512).contains(&id.len()) && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// First path segments whose whole subtree only existed on self-hosted On-Premise.
const NOT_ON_CLOUD: [&str; 6] = [
    "account",
    "certificates",
    "stats",
    "services",
    "groups",
    "stickerpacks",
];

/// Whether the query has `key=value` (exactly, after percent-decoding).
fn query_has(path_and_query: &str, key: &str, value: &str) -> bool {
    let Some((_, query)) = path_and_query.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        decode_segment(k) == key && decode_segment(v) == value
    })
}

/// Message ids travel URL-encoded in paths (`wamid.HBgL...%3D`); Cloud wants them decoded.
fn decode_segment(segment: &str) -> Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who may call what, and what body it takes, is the route's own: spot checks of the policy.
    #[test]
    fn routes_carry_their_policy() {
        let policy = |method, path| {
            let r = route(method, path);
            (r.caller(), r.intake())
        };
        for (method, path, expected) in [
            ("POST", "/v1/messages", (Caller::Client, Intake::Json)),
            ("POST", "/v1/media", (Caller::Client, Intake::Stream)),
            ("GET", "/v1/media/1", (Caller::Client, Intake::Nothing)),
            ("POST", "/v1/users/login", (Caller::Anyone, Intake::Nothing)),
            (
                "GET",
                "/admin/webhooks/dead",
                (Caller::Admin, Intake::Nothing),
            ),
            (
                "POST",
                "/cloud-webhooks/default",
                (Caller::Cloud, Intake::Stream),
            ),
        ] {
            assert_eq!(policy(method, path), expected, "{method} {path}");
        }
        assert_eq!(policy("GET", "/nope"), (Caller::Client, Intake::Json));
    }

    /// Ids become upstream paths sent with the client's key: every hostile form is 404 before
    /// any upstream call.
    #[test]
    fn only_valid_ids_reach_an_upstream_path() {
        let long_digits = "1".repeat(65);
        let long_name = "a".repeat(513);
        let refused = [
            ("GET", "/v1/media/..%2f..%2fadmin".to_owned()),
            ("GET", "/v1/media/..%5c..%5cadmin".to_owned()),
            ("GET", "/v1/media/..%2F..%2Fmessages".to_owned()),
            ("DELETE", "/v1/media/%2e%2e%2fmessages".to_owned()),
            ("DELETE", "/v1/media/%2E%2E".to_owned()),
            ("GET", "/v1/media/../messages".to_owned()),
            ("GET", "/v1/media/123%00".to_owned()),
            ("GET", "/v1/media/123%0d%0aX-Injected:%201".to_owned()),
            ("GET", "/v1/media/12%203".to_owned()),
            ("GET", "/v1/media/12%2f3".to_owned()),
            ("GET", "/v1/media/abc".to_owned()),
            ("GET", format!("/v1/media/{long_digits}")),
            ("GET", "/v1/media/".to_owned()),
            ("GET", "/v1/media".to_owned()),
            ("GET", "/v1/media/a/b".to_owned()),
            ("DELETE", "/v1/media/1/2".to_owned()),
            ("GET", "/v1/configs/templates/..%2f..%2fmessages".to_owned()),
            ("GET", "/v1/configs/templates/%2e%2e/messages".to_owned()),
            ("DELETE", "/v1/configs/templates/a%2fb".to_owned()),
            ("DELETE", "/v1/configs/templates/a%00".to_owned()),
            ("DELETE", "/v1/configs/templates/a%20b".to_owned()),
            ("DELETE", "/v1/configs/templates/a/b".to_owned()),
            ("DELETE", format!("/v1/configs/templates/{long_name}")),
            ("PUT", "/v1/messages/wamid.1%0d%0a".to_owned()),
            ("PUT", "/v1/messages/wamid%201".to_owned()),
            ("PUT", format!("/v1/messages/{}", "w".repeat(513))),
        ];
        for (method, path) in &refused {
            let routed = route(method, path);
            assert!(
                matches!(routed, Route::NotFound | Route::InvalidSegment),
                "{method} {path} -> {routed:?}"
            );
        }
        let accepted = [
            ("GET", "/v1/media/1037543291543636"),
            ("DELETE", "/v1/media/42"),
            ("DELETE", "/v1/configs/templates/order_update_2"),
            ("GET", "/v1/configs/templates"),
            ("PUT", "/v1/messages/wamid.HBgL%2Fab%2B%3D%3D"),
        ];
        for (method, path) in accepted {
            let routed = route(method, path);
            assert!(
                !matches!(routed, Route::NotFound | Route::InvalidSegment),
                "{method} {path} -> {routed:?}"
            );
        }
    }

    #[test]
    fn table() {
        let cases = [
            ("POST", "/v1/messages", Route::SendMessage),
            ("POST", "/v1/messages/", Route::SendMessage),
            ("GET", "/v1/messages", Route::NotFound),
            (
                "PUT",
                "/v1/messages/wamid.HBg%3D%3D",
                Route::MarkRead {
                    message_id: "wamid.HBg==".into(),
                },
            ),
            ("POST", "/v1/contacts", Route::Contacts),
            ("GET", "/v1/health?x=1", Route::Health),
            ("GET", "/v1/configs/templates?limit=5", Route::PassThrough),
            ("DELETE", "/v1/configs/templates/hello", Route::PassThrough),
            ("POST", "/v1/contacts/15551234567/block", Route::NotOnCloud),
            ("GET", "/v1/stats/app", Route::NotOnCloud),
            ("POST", "/v1/account", Route::NotOnCloud),
            ("POST", "/v1/settings/backup", Route::NotOnCloud),
            ("GET", "/v1/groups", Route::NotOnCloud),
            ("POST", "/v1/media", Route::UploadMedia),
            (
                "GET",
                "/v1/media/1037543291543636",
                Route::DownloadMedia {
                    media_id: "1037543291543636".into(),
                },
            ),
            (
                "DELETE",
                "/v1/media/42",
                Route::DeleteMedia {
                    media_id: "42".into(),
                },
            ),
            ("PUT", "/v1/media", Route::NotFound),
            (
                "DELETE",
                "/v1/settings/application/media/providers/cdn",
                Route::MediaProviders {
                    name: Some("cdn".into()),
                },
            ),
            (
                "GET",
                "/v1/settings/business/profile",
                Route::BusinessProfileGet,
            ),
            (
                "GET",
                "/v1/settings/profile/photo?format=link",
                Route::PhotoGet { link: true },
            ),
            (
                "GET",
                "/v1/settings/profile/photo",
                Route::PhotoGet { link: false },
            ),
            (
                "PATCH",
                "/v1/settings/application",
                Route::ApplicationSettings,
            ),
            ("POST", "/v1/users/login", Route::Login),
            ("GET", "/v1/settings/profile", Route::NotYetSupported),
            ("GET", "/v2/messages", Route::NotFound),
            ("GET", "/", Route::NotFound),
            ("GET", "", Route::NotFound),
            (
                "GET",
                "/v1/configs/templates/../../messages",
                Route::NotFound,
            ),
            ("PUT", "/v1/messages/%FF%FE", Route::InvalidSegment),
            ("GET", "/v1/configs/templates/%2e%2E/x", Route::NotFound),
        ];
        for (method, path, expected) in cases {
            assert_eq!(route(method, path), expected, "{method} {path}");
        }
    }
}
