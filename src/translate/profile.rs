//! Business profile, about and photo: On-Premise's `settings` shapes <-> Cloud's
//! `/whatsapp_business_profile` (`data[0]` on read, flat fields plus `messaging_product` on write).
//! Validation happens here, before any upstream call, with the field and limit named.

use serde_json::{json, Map, Value};

use super::{as_object, Meta, TranslateError};

/// The fields On-Premise's business profile had.
pub const PROFILE_FIELDS: [&str; 5] = ["address", "description", "email", "vertical", "websites"];

/// What GET asks Cloud for.
pub const PROFILE_QUERY: &str =
    "/whatsapp_business_profile?fields=address,description,email,websites,vertical";

/// On-Premise vertical names and Cloud enums, in On-Premise's order.
const VERTICALS: [(&str, &str); 17] = [
    ("Automotive", "AUTO"),
    ("Beauty, Spa and Salon", "BEAUTY"),
    ("Clothing and Apparel", "APPAREL"),
    ("Education", "EDU"),
    ("Entertainment", "ENTERTAIN"),
    ("Event Planning and Service", "EVENT_PLAN"),
    ("Finance and Banking", "FINANCE"),
    ("Food and Grocery", "GROCERY"),
    ("Public Service", "GOVT"),
    ("Hotel and Lodging", "HOTEL"),
    ("Medical and Health", "HEALTH"),
    ("Non-profit", "NONPROFIT"),
    ("Professional Services", "PROF_SERVICES"),
    ("Shopping and Retail", "RETAIL"),
    ("Travel and Transportation", "TRAVEL"),
    ("Restaurant", "RESTAURANT"),
    ("Other", "OTHER"),
];

/// Cloud enums with no On-Premise name that a client may still send as they are.
const CLOUD_ONLY_VERTICALS: [&str; 6] = [
    "NOT_A_BIZ",
    "UNDEFINED",
    "ALCOHOL",
    "ONLINE_GAMBLING",
    "PHYSICAL_GAMBLING",
    "OTC_DRUGS",
];

/// Lowercase with whitespace removed: "Shopping  and RETAIL" and "shopping and retail" agree.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// On-Premise vertical name (or alias, or the Cloud enum itself) -> Cloud enum.
pub fn onprem_vertical_to_cloud(name: &str) -> Result<&'static str, TranslateError> {
    if name.is_empty() {
        // GET answers "" for UNDEFINED; a client posting its profile back sends "".
        return Ok("UNDEFINED");
    }
    let folded = fold(name);
    // 360dialog's page lists "Beauty, Spa and Salon" as two bullets; clients used either half.
    if folded == fold("Beauty") || folded == fold("Spa and Salon") {
        return Ok("BEAUTY");
    }
    VERTICALS
        .iter()
        .find(|(onprem, cloud)| fold(onprem) == folded || fold(cloud) == folded)
        .map(|(_, cloud)| *cloud)
        .or_else(|| {
            CLOUD_ONLY_VERTICALS
                .iter()
                .find(|cloud| fold(cloud) == folded)
                .copied()
        })
        .ok_or_else(|| {
            let accepted: Vec<&str> = VERTICALS.iter().map(|(onprem, _)| *onprem).collect();
            TranslateError::invalid(
                format!("vertical {name}"),
                format!(
                    "is not accepted; accepted: {} (or their Cloud enums)",
                    accepted.join("; ")
                ),
            )
        })
}

/// Cloud enum -> On-Premise name. Enums On-Premise never had are kept as they are.
pub fn cloud_vertical_to_onprem(cloud: &str) -> String {
    match cloud {
        "UNDEFINED" => String::new(),
        "NOT_A_BIZ" => "Other".to_owned(),
        _ => VERTICALS
            .iter()
            .find(|(_, enum_name)| *enum_name == cloud)
            .map(|(onprem, _)| (*onprem).to_owned())
            .unwrap_or_else(|| cloud.to_owned()),
    }
}

/// On-Premise profile update (flat, or nested as GET answers it) -> Cloud body with only the
/// fields sent. Everything is validated before the proxy calls upstream.
pub fn onprem_to_cloud_business_profile(body: &Value) -> Result<Value, TranslateError> {
    let body = match body {
        Value::Null => return Err(missing_profile_fields()),
        other => as_object(other, "request body")?,
    };
    let profile = match body
        .get("settings")
        .and_then(|s| s.get("business"))
        .and_then(|b| b.get("profile"))
    {
        Some(nested) => as_object(nested, "settings.business.profile")?,
        None => body,
    };
    if !PROFILE_FIELDS.iter().any(|f| profile.contains_key(*f)) {
        return Err(missing_profile_fields());
    }
    let mut out = Map::with_capacity(profile.len() + 1);
    out.insert("messaging_product".into(), Value::from("whatsapp"));
    for (key, value) in profile {
        let checked = match key.as_str() {
            "address" => bounded_text(value, "address", 256)?,
            "description" => bounded_text(value, "description", 512)?,
            "email" => email(value)?,
            "websites" => websites(value)?,
            "vertical" => vertical(value)?,
            _ => value.clone(),
        };
        out.insert(key.clone(), checked);
    }
    Ok(Value::Object(out))
}

fn missing_profile_fields() -> TranslateError {
    TranslateError::missing(format!("at least one of {}", PROFILE_FIELDS.join(", ")))
}

fn text<'a>(value: &'a Value, path: &str) -> Result<&'a str, TranslateError> {
    value
        .as_str()
        .ok_or_else(|| TranslateError::wrong_type(path, "a string"))
}

fn bounded_text(value: &Value, path: &str, limit: usize) -> Result<Value, TranslateError> {
    let s = text(value, path)?;
    if s.chars().count() > limit {
        return Err(TranslateError::invalid(
            path,
            format!("must be at most {limit} characters"),
        ));
    }
    Ok(Value::from(s))
}

fn email(value: &Value) -> Result<Value, TranslateError> {
    let checked = bounded_text(value, "email", 128)?;
    let address = checked.as_str().unwrap_or_default();
    let shaped = match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !address.chars().any(char::is_whitespace)
        }
        None => false,
    };
    // An empty email clears it, as On-Premise allowed.
    if !shaped && !address.is_empty() {
        return Err(TranslateError::invalid("email", "is not an email address"));
    }
    Ok(checked)
}

fn websites(value: &Value) -> Result<Value, TranslateError> {
    let Value::Array(sites) = value else {
        return Err(TranslateError::wrong_type("websites", "an array"));
    };
    if sites.len() > 2 {
        return Err(TranslateError::invalid(
            "websites",
            "must have at most 2 entries",
        ));
    }
    for (i, site) in sites.iter().enumerate() {
        let path = format!("websites[{i}]");
        bounded_text(site, &path, 256)?;
        let site = text(site, &path)?;
        let lower = site.to_ascii_lowercase();
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Err(TranslateError::invalid(
                path,
                "must start with http:// or https://",
            ));
        }
    }
    Ok(value.clone())
}

fn vertical(value: &Value) -> Result<Value, TranslateError> {
    let name = match value {
        Value::String(name) => name.as_str(),
        // Some clients send the vertical as a one-element array.
        Value::Array(names) if names.len() == 1 => text(&names[0], "vertical[0]")?,
        Value::Array(names) => {
            return Err(TranslateError::invalid(
                "vertical",
                format!("must be one name, got {}", names.len()),
            ))
        }
        _ => return Err(TranslateError::wrong_type("vertical", "a string")),
    };
    onprem_vertical_to_cloud(name).map(Value::from)
}

/// Cloud `{"data":[{...}]}` -> the first (only) profile object.
fn first_data(body: &Value) -> Result<&Map<String, Value>, TranslateError> {
    match body.get("data").and_then(|d| d.get(0)) {
        Some(first) => as_object(first, "data[0]"),
        None => Err(TranslateError::missing("data[0]")),
    }
}

/// Cloud profile -> `{"settings":{"business":{"profile":{five fields}}}}`, always all five.
pub fn cloud_to_onprem_business_profile(
    body: &Value,
    meta: &Meta,
) -> Result<Value, TranslateError> {
    let data = first_data(body)?;
    let string = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let websites = match data.get("websites") {
        Some(Value::Array(sites)) => Value::Array(sites.clone()),
        _ => json!([]),
    };
    let vertical = data
        .get("vertical")
        .and_then(Value::as_str)
        .map(cloud_vertical_to_onprem)
        .unwrap_or_default();
    Ok(json!({
        "settings": {"business": {"profile": {
            "address": string("address"),
            "description": string("description"),
            "email": string("email"),
            "vertical": vertical,
            "websites": websites,
        }}},
        "meta": meta.to_value(),
    }))
}

/// On-Premise about text -> Cloud body. On-Premise allowed 1 to 139 characters.
pub fn onprem_to_cloud_about(body: &Value) -> Result<Value, TranslateError> {
    let body = match body {
        Value::Null => return Err(TranslateError::missing("text")),
        other => as_object(other, "request body")?,
    };
    let about = match body.get("text") {
        None | Some(Value::Null) => return Err(TranslateError::missing("text")),
        Some(value) => text(value, "text")?,
    };
    let length = about.chars().count();
    if !(1..=139).contains(&length) {
        return Err(TranslateError::invalid(
            "text",
            "must be 1 to 139 characters",
        ));
    }
    Ok(json!({"messaging_product": "whatsapp", "about": about}))
}

pub fn cloud_to_onprem_about(body: &Value, meta: &Meta) -> Result<Value, TranslateError> {
    let about = first_data(body)?
        .get("about")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(json!({"settings": {"profile": {"about": {"text": about}}}, "meta": meta.to_value()}))
}

/// The profile picture url, for `?format=link` and for streaming the image itself.
pub fn cloud_profile_picture_url(body: &Value) -> Result<String, TranslateError> {
    Ok(first_data(body)?
        .get("profile_picture_url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned())
}

pub fn cloud_to_onprem_photo_link(body: &Value, meta: &Meta) -> Result<Value, TranslateError> {
    let link = cloud_profile_picture_url(body)?;
    Ok(json!({"settings": {"profile": {"photo": {"link": link}}}, "meta": meta.to_value()}))
}

/// Resumable upload step 1 answers `{"id":"upload:<id>"}`, sometimes without the prefix,
/// which is part of the path of step 2.
pub fn cloud_upload_session_path(body: &Value) -> Result<String, TranslateError> {
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| TranslateError::missing("id"))?;
    let id = id.strip_prefix("upload:").unwrap_or(id);
    Ok(format!("/upload:{id}"))
}

/// Resumable upload step 2 answers `{"h": handle}`.
pub fn cloud_upload_handle(body: &Value) -> Result<String, TranslateError> {
    body.get("h")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| TranslateError::missing("h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vertical_round_trips() {
        for (onprem, cloud) in VERTICALS {
            assert_eq!(onprem_vertical_to_cloud(onprem).unwrap(), cloud);
            assert_eq!(cloud_vertical_to_onprem(cloud), onprem);
        }
    }

    #[test]
    fn aliases_case_and_spaces() {
        for alias in ["Beauty", "spa and salon", "BEAUTY", "beauty,spa and salon"] {
            assert_eq!(
                onprem_vertical_to_cloud(alias).unwrap(),
                "BEAUTY",
                "{alias}"
            );
        }
        assert_eq!(
            onprem_vertical_to_cloud("  shopping AND retail ").unwrap(),
            "RETAIL"
        );
        assert_eq!(onprem_vertical_to_cloud("Nonprofit").unwrap(), "NONPROFIT"); // the enum
        assert!(onprem_vertical_to_cloud("Clothing-and-Apparel").is_err());
        assert_eq!(cloud_vertical_to_onprem("NOT_A_BIZ"), "Other");
        assert_eq!(cloud_vertical_to_onprem("UNDEFINED"), "");
    }

    #[test]
    fn unknown_vertical_is_never_sent_as_other() {
        let err = onprem_vertical_to_cloud("Spaceships")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("vertical Spaceships is not accepted; accepted: Automotive;"),
            "{err}"
        );
    }

    #[test]
    fn upload_session_prefix_is_added_back() {
        assert_eq!(
            cloud_upload_session_path(&json!({"id": "upload:MTph"})).unwrap(),
            "/upload:MTph"
        );
        assert_eq!(
            cloud_upload_session_path(&json!({"id": "MTph"})).unwrap(),
            "/upload:MTph"
        );
    }
}
