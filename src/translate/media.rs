//! Media, the pure half: which uploads Cloud accepts and how large, the multipart framing of
//! an upload, the two-step download's metadata, and the answers' On-Premise shapes.

use serde_json::{json, Value};

use super::messages::{HEADER_MEDIA_TYPES, MEDIA_TYPES};
use super::{as_object, required_str, Meta, TranslateError};

const MIB: u64 = 1024 * 1024;
/// Cloud accepts nothing larger, whatever the type.
pub const MAX_MEDIA_BYTES: u64 = 100 * MIB;

/// One accepted upload type: Cloud's per-type size limit and the extension we give the
/// synthesized file name (Cloud wants a file name on the `file` part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaKind {
    pub mime: &'static str,
    pub limit: u64,
    pub extension: &'static str,
}

/// Cloud's supported media types and limits, from Meta's Cloud API media reference
/// (developers.facebook.com/docs/whatsapp/cloud-api/reference/media, "Supported media types",
/// December 2025): audio aac/amr/mpeg/mp4/ogg (Opus only) 16 MB; documents txt, pdf and the MS
/// Office formats 100 MB; images jpeg/png 5 MB; stickers webp 100 KB static, 500 KB animated;
/// video mp4/3gpp 16 MB. Meta's OpenAPI document (business-messaging-api_v23.0.yaml, the media
/// upload examples) names no types or limits of its own. Stickers get the animated limit: a
/// static sticker over 100 KB is refused by Cloud itself.
const KINDS: [MediaKind; 18] = [
    kind("image/jpeg", 5 * MIB, "jpg"),
    kind("image/png", 5 * MIB, "png"),
    kind("image/webp", 500 * 1024, "webp"),
    kind("audio/aac", 16 * MIB, "aac"),
    kind("audio/amr", 16 * MIB, "amr"),
    kind("audio/mpeg", 16 * MIB, "mp3"),
    kind("audio/mp4", 16 * MIB, "m4a"),
    kind("audio/ogg", 16 * MIB, "ogg"),
    kind("video/mp4", 16 * MIB, "mp4"),
    kind("video/3gpp", 16 * MIB, "3gp"),
    kind("text/plain", MAX_MEDIA_BYTES, "txt"),
    kind("application/pdf", MAX_MEDIA_BYTES, "pdf"),
    kind("application/msword", MAX_MEDIA_BYTES, "doc"),
    kind("application/vnd.ms-excel", MAX_MEDIA_BYTES, "xls"),
    kind("application/vnd.ms-powerpoint", MAX_MEDIA_BYTES, "ppt"),
    kind(
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        MAX_MEDIA_BYTES,
        "docx",
    ),
    kind(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        MAX_MEDIA_BYTES,
        "xlsx",
    ),
    kind(
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        MAX_MEDIA_BYTES,
        "pptx",
    ),
];

const fn kind(mime: &'static str, limit: u64, extension: &'static str) -> MediaKind {
    MediaKind {
        mime,
        limit,
        extension,
    }
}

/// The kind for a `Content-Type` header value (parameters such as `codecs=opus` ignored).
pub fn upload_kind(content_type: Option<&str>) -> Result<MediaKind, TranslateError> {
    let Some(content_type) = content_type.filter(|c| !c.trim().is_empty()) else {
        return Err(TranslateError::invalid(
            "Content-Type",
            format!("is required for media uploads; supported: {}", supported()),
        ));
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    KINDS
        .iter()
        .find(|k| k.mime.eq_ignore_ascii_case(essence))
        .copied()
        .ok_or_else(|| {
            TranslateError::invalid(
                "Content-Type",
                format!(
                    "{essence} is not a supported media type; supported: {}",
                    supported()
                ),
            )
        })
}

fn supported() -> String {
    KINDS.iter().map(|k| k.mime).collect::<Vec<_>>().join(", ")
}

/// Refuses a body over the kind's limit (or over Cloud's absolute maximum).
pub fn check_upload_size(kind: &MediaKind, length: u64) -> Result<(), TranslateError> {
    if length > kind.limit {
        return Err(TranslateError::TooLarge {
            what: format!("{} media", kind.mime),
            limit: kind.limit,
        });
    }
    Ok(())
}

/// The fixed parts around the file bytes in Cloud's multipart upload. The file streams
/// between `head` and `tail`, so the total length is known whenever the client's is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartFraming {
    pub content_type: String,
    pub head: String,
    pub tail: String,
}

/// `boundary` must not occur in the file; callers pass a fresh random token.
pub fn multipart_upload_framing(kind: &MediaKind, boundary: &str) -> MultipartFraming {
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"messaging_product\"\r\n\r\nwhatsapp\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\n{mime}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.{ext}\"\r\n\
         Content-Type: {mime}\r\n\r\n",
        mime = kind.mime,
        ext = kind.extension,
    );
    MultipartFraming {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        head,
        tail: format!("\r\n--{boundary}--\r\n"),
    }
}

/// Cloud `{"id"}` -> On-Premise `{"media":[{"id"}],"meta"}` (answered with 201).
pub fn cloud_to_onprem_upload_response(body: &Value, meta: &Meta) -> Result<Value, TranslateError> {
    let id = required_str(as_object(body, "response")?, "", "id")?;
    Ok(json!({"media": [{"id": id}], "meta": meta.to_value()}))
}

/// The media url comes from upstream, and its path is fetched with the client's key: only an
/// `http(s)` url with no dot segments (raw or percent-encoded) and no control characters or
/// spaces is used. Anything else (`file://`, `../`, CR/LF) is an unreadable answer.
fn check_media_url(url: &str) -> Result<(), TranslateError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(TranslateError::invalid("url", "is not an http(s) URL"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TranslateError::invalid("url", "has control characters"));
    }
    // A fragment has no place in a media url, and it would make the path checked here differ
    // from the one forwarded (`https://host#/../admin`).
    if url.contains('#') {
        return Err(TranslateError::invalid("url", "has a fragment"));
    }
    let path = lower.split(['?', '#']).next().unwrap_or("");
    let path = path.split_once("://").map_or("", |(_, rest)| rest);
    let path = path.find('/').map_or("", |i| &path[i..]);
    let dot_segment = path.split(['/', '\\']).any(|segment| {
        let decoded = segment.replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if dot_segment || path.contains("%2f") || path.contains("%5c") {
        return Err(TranslateError::invalid(
            "url",
            "has dot segments or encoded slashes",
        ));
    }
    Ok(())
}

/// What step one of a download (`GET /{id}`) tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMediaInfo {
    /// The media url as Cloud gave it (checked: http(s), no dot segments or control
    /// characters).
    pub url: String,
    /// Path and query of the media url, byte for byte: the query is a signed secret.
    pub path_and_query: String,
    pub mime_type: String,
    pub file_size: Option<u64>,
}

/// Reads `{url, mime_type, sha256, file_size, id}`. The url's scheme and host
/// (`https://lookaside.fbsbx.com`) are replaced by the upstream root, so only its path and
/// query are kept.
pub fn cloud_media_info(body: &Value) -> Result<CloudMediaInfo, TranslateError> {
    let info = as_object(body, "response")?;
    let url = required_str(info, "", "url")?;
    check_media_url(url)?;
    let after_scheme = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| TranslateError::invalid("url", "is not an absolute URL"))?;
    let path_and_query = match after_scheme.find(['/', '?']) {
        Some(i) if after_scheme[i..].starts_with('/') => after_scheme[i..].to_owned(),
        Some(i) => format!("/{}", &after_scheme[i..]),
        None => "/".to_owned(),
    };
    let mime_type = required_str(info, "", "mime_type")?.to_owned();
    let file_size = match info.get("file_size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(CloudMediaInfo {
        url: url.to_owned(),
        path_and_query,
        mime_type,
        file_size,
    })
}

/// Media providers: On-Premise let clients register credentials for the hosts their media
/// links point at (`[{"name","type":"www","config":{"basic":{..}}|{"bearer":..}}]`). Cloud
/// fetches links without credentials, so the proxy keeps them and fetches such links itself.
pub fn onprem_media_providers(body: &Value) -> Result<Vec<Value>, TranslateError> {
    let providers = match body {
        Value::Array(providers) => providers,
        // Some clients wrap the list as On-Premise's GET answered it.
        Value::Object(map) => match map.get("media").and_then(|m| m.get("providers")) {
            Some(Value::Array(providers)) => providers,
            _ => {
                return Err(TranslateError::wrong_type(
                    "request body",
                    "an array of providers",
                ))
            }
        },
        Value::Null => return Err(TranslateError::missing("providers")),
        _ => {
            return Err(TranslateError::wrong_type(
                "request body",
                "an array of providers",
            ))
        }
    };
    if providers.is_empty() {
        return Err(TranslateError::missing("providers"));
    }
    providers
        .iter()
        .enumerate()
        .map(|(i, p)| validate_provider(p, &format!("providers[{i}]")))
        .collect()
}

fn validate_provider(provider: &Value, path: &str) -> Result<Value, TranslateError> {
    let map = as_object(provider, path)?;
    let name = required_str(map, path, "name")?;
    if name.is_empty() {
        return Err(TranslateError::invalid(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let kind = super::optional_str(map, path, "type")?.unwrap_or("www");
    if kind != "www" {
        return Err(TranslateError::invalid(
            format!("{path}.type"),
            format!("must be \"www\", got \"{kind}\""),
        ));
    }
    let config_path = format!("{path}.config");
    let config = match map.get("config") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(config) => {
            let config = as_object(config, &config_path)?;
            if let Some(basic) = config.get("basic").filter(|b| !b.is_null()) {
                let basic_path = format!("{config_path}.basic");
                let basic = as_object(basic, &basic_path)?;
                required_str(basic, &basic_path, "username")?;
                required_str(basic, &basic_path, "password")?;
            }
            if config.get("bearer").is_some_and(|b| !b.is_null()) {
                required_str(config, &config_path, "bearer")?;
            }
            Value::Object(config.clone())
        }
    };
    Ok(json!({"name": name, "type": kind, "config": config}))
}

/// Stored providers updated by name with `incoming` (On-Premise's POST added or replaced).
pub fn merge_media_providers(stored: &[Value], incoming: Vec<Value>) -> Vec<Value> {
    let mut merged: Vec<Value> = stored
        .iter()
        .filter(|s| !incoming.iter().any(|i| i["name"] == s["name"]))
        .cloned()
        .collect();
    merged.extend(incoming);
    merged
}

/// On-Premise's GET answer for the stored providers.
pub fn onprem_media_providers_answer(stored: &[Value], meta: &Meta) -> Value {
    json!({"settings": {"application": {"media": {"providers": stored}}}, "meta": meta.to_value()})
}

/// A media object of a send that is a `link` with a named On-Premise `provider`: the proxy
/// fetches it with that provider's credentials, uploads it and sends it by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderLink {
    /// JSON pointer to the media object (`/image`, `/template/components/0/parameters/0/video`,
    /// `/interactive/header/document`).
    pub pointer: String,
    /// Dotted path for error details (`template.components[0].parameters[0].video`).
    pub path: String,
    pub link: String,
    pub provider_name: String,
}

/// Every media object of a send that names a provider. On-Premise allowed `provider` on any
/// media object: the message's own, a template header parameter, an interactive header.
pub fn provider_links(message: &Value) -> Vec<ProviderLink> {
    let mut found = Vec::new();
    let mut look = |media: Option<&Value>, pointer: String, path: String| {
        let Some(media) = media else { return };
        let link = media.get("link").and_then(Value::as_str);
        let name = media
            .get("provider")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str);
        if let (Some(link), Some(name)) = (link, name) {
            found.push(ProviderLink {
                pointer,
                path,
                link: link.to_owned(),
                provider_name: name.to_owned(),
            });
        }
    };
    // A send without `type` is the type its message object implies, as the translation takes it.
    let kind = match (message.get("type").and_then(Value::as_str), message) {
        (Some(kind), _) => kind,
        (None, Value::Object(map)) => super::messages::implied_type(map),
        (None, _) => "",
    };
    if MEDIA_TYPES.contains(&kind) {
        look(message.get(kind), format!("/{kind}"), kind.to_owned());
    }
    if let Some(components) = message.pointer("/template/components") {
        template_provider_links(
            components,
            "/template/components",
            "template.components",
            &mut look,
        );
    }
    if let Some(header) = message.pointer("/interactive/header") {
        for media in HEADER_MEDIA_TYPES {
            look(
                header.get(media),
                format!("/interactive/header/{media}"),
                format!("interactive.header.{media}"),
            );
        }
    }
    if let Some(Value::Array(cards)) = message.pointer("/interactive/action/cards") {
        for (k, card) in cards.iter().enumerate() {
            for media in HEADER_MEDIA_TYPES {
                look(
                    card.get("header").and_then(|h| h.get(media)),
                    format!("/interactive/action/cards/{k}/header/{media}"),
                    format!("interactive.action.cards[{k}].header.{media}"),
                );
            }
        }
    }
    found
}

/// Media parameters of template components that name a provider, carousel cards' own
/// components included.
fn template_provider_links(
    components: &Value,
    pointer: &str,
    path: &str,
    look: &mut impl FnMut(Option<&Value>, String, String),
) {
    let Value::Array(components) = components else {
        return;
    };
    for (c, component) in components.iter().enumerate() {
        if let Some(Value::Array(parameters)) = component.get("parameters") {
            for (p, parameter) in parameters.iter().enumerate() {
                for media in HEADER_MEDIA_TYPES {
                    look(
                        parameter.get(media),
                        format!("{pointer}/{c}/parameters/{p}/{media}"),
                        format!("{path}[{c}].parameters[{p}].{media}"),
                    );
                }
            }
        }
        if let Some(Value::Array(cards)) = component.get("cards") {
            for (k, card) in cards.iter().enumerate() {
                if let Some(card_components) = card.get("components") {
                    template_provider_links(
                        card_components,
                        &format!("{pointer}/{c}/cards/{k}/components"),
                        &format!("{path}[{c}].cards[{k}].components"),
                        look,
                    );
                }
            }
        }
    }
}

/// The `Authorization` header value a provider's config asks for, if any.
pub fn provider_authorization(provider: &Value) -> Option<String> {
    use base64::Engine as _;
    let config = provider.get("config")?;
    if let Some(token) = config.get("bearer").and_then(Value::as_str) {
        return Some(format!("Bearer {token}"));
    }
    let basic = config.get("basic")?;
    let user = basic.get("username")?.as_str()?;
    let password = basic.get("password")?.as_str()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Some(format!("Basic {encoded}"))
}

/// The media object at `pointer` rewritten to use the id of the media the proxy uploaded in its
/// place; `caption` and `filename` stay.
pub fn send_by_uploaded_id(message: &mut Value, pointer: &str, media_id: &str) {
    if let Some(Value::Object(media)) = message.pointer_mut(pointer) {
        media.remove("link");
        media.remove("provider");
        media.insert("id".into(), Value::from(media_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_parameters_are_ignored_and_case_does_not_matter() {
        assert_eq!(
            upload_kind(Some("audio/OGG; codecs=opus")).unwrap().mime,
            "audio/ogg"
        );
        assert!(upload_kind(Some("application/x-msdownload")).is_err());
        assert!(upload_kind(None).is_err());
    }

    #[test]
    fn accepted_types_are_exactly_meta_s_table() {
        let accepted: Vec<(&str, u64)> = KINDS.iter().map(|k| (k.mime, k.limit)).collect();
        let office = "application/vnd.openxmlformats-officedocument";
        assert_eq!(
            accepted,
            [
                ("image/jpeg", 5 * MIB),
                ("image/png", 5 * MIB),
                ("image/webp", 500 * 1024),
                ("audio/aac", 16 * MIB),
                ("audio/amr", 16 * MIB),
                ("audio/mpeg", 16 * MIB),
                ("audio/mp4", 16 * MIB),
                ("audio/ogg", 16 * MIB),
                ("video/mp4", 16 * MIB),
                ("video/3gpp", 16 * MIB),
                ("text/plain", 100 * MIB),
                ("application/pdf", 100 * MIB),
                ("application/msword", 100 * MIB),
                ("application/vnd.ms-excel", 100 * MIB),
                ("application/vnd.ms-powerpoint", 100 * MIB),
                (&*format!("{office}.wordprocessingml.document"), 100 * MIB),
                (&*format!("{office}.spreadsheetml.sheet"), 100 * MIB),
                (&*format!("{office}.presentationml.presentation"), 100 * MIB),
            ]
        );
    }

    #[test]
    fn limits_follow_cloud() {
        let jpeg = upload_kind(Some("image/jpeg")).unwrap();
        assert!(check_upload_size(&jpeg, 5 * MIB).is_ok());
        assert!(check_upload_size(&jpeg, 5 * MIB + 1).is_err());
        let pdf = upload_kind(Some("application/pdf")).unwrap();
        assert!(check_upload_size(&pdf, MAX_MEDIA_BYTES + 1).is_err());
    }

    #[test]
    fn media_url_keeps_path_and_query_byte_for_byte() {
        let info = cloud_media_info(&json!({
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1&ext=2&hash=ATs%2Fx%3D&x=a=b",
            "mime_type": "image/jpeg", "file_size": 10, "id": "1"
        }))
        .unwrap();
        assert_eq!(
            info.path_and_query,
            "/whatsapp_business/attachments/?mid=1&ext=2&hash=ATs%2Fx%3D&x=a=b"
        );
        assert_eq!(info.file_size, Some(10));
    }

    #[test]
    fn media_urls_from_upstream_are_checked_before_use() {
        let info = |url: &str| {
            cloud_media_info(&json!({"url": url, "mime_type": "image/jpeg", "id": "1"}))
        };
        for bad in [
            "file:///etc/passwd",
            "ftp://lookaside.fbsbx.com/x",
            "https://lookaside.fbsbx.com/../admin",
            "https://lookaside.fbsbx.com/a/%2e%2e/admin",
            "https://lookaside.fbsbx.com/a/%2E%2E%2Fadmin",
            "https://lookaside.fbsbx.com/a/./b",
            "https://lookaside.fbsbx.com/a\r\nX-Injected: 1",
            "https://lookaside.fbsbx.com/a b",
            "https://lookaside.fbsbx.com#/../../admin?x=1",
            "https://h#x/%2e%2e/%2e%2e/admin",
            "/relative/path",
        ] {
            assert!(info(bad).is_err(), "{bad}");
        }
        assert!(info(
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1&hash=a%2Fb"
        )
        .is_ok());
        assert!(info("http://127.0.0.1:9/whatsapp_business/attachments/?mid=1").is_ok());
    }

    #[test]
    fn provider_links_are_found_wherever_on_premise_allowed_them() {
        let with = |link: &str| json!({"link": link, "provider": {"name": "cdn"}});
        let message = json!({"to": "1", "image": with("https://a/1.jpg")});
        let found = provider_links(&message);
        assert_eq!(found.len(), 1, "a send without type is its object's type");
        assert_eq!(found[0].pointer, "/image");
        let carousel = json!({"to": "1", "type": "interactive", "interactive": {"type": "carousel",
            "action": {"cards": [{"header": {"type": "image", "image": with("https://a/2.jpg")}},
                                 {"header": {"type": "video", "video": with("https://a/3.mp4")}}]}}});
        let pointers: Vec<String> = provider_links(&carousel)
            .into_iter()
            .map(|l| l.pointer)
            .collect();
        assert_eq!(
            pointers,
            [
                "/interactive/action/cards/0/header/image",
                "/interactive/action/cards/1/header/video"
            ]
        );
    }

    #[test]
    fn framing_names_every_part() {
        let kind = upload_kind(Some("image/png")).unwrap();
        let framing = multipart_upload_framing(&kind, "B0UND");
        assert!(framing
            .head
            .contains("name=\"messaging_product\"\r\n\r\nwhatsapp\r\n"));
        assert!(framing.head.contains("name=\"type\"\r\n\r\nimage/png\r\n"));
        assert!(framing
            .head
            .ends_with("filename=\"upload.png\"\r\nContent-Type: image/png\r\n\r\n"));
        assert_eq!(framing.tail, "\r\n--B0UND--\r\n");
    }
}
