//! Templates: the legacy `hsm` object and the On-Premise `template` object, rewritten into the
//! Cloud `template` object.
//!
//! Cloud renders `currency` and `date_time` parameters from `fallback_value` only, so where the
//! client left it out we render one ourselves rather than let Cloud reject the send.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{as_object, join, optional_str, required_str, TranslateError};

/// On-Premise `hsm` -> Cloud `template`. `namespace` and `language.policy` have no Cloud
/// meaning (templates are addressed by name and language) and are dropped.
pub fn onprem_hsm_to_cloud_template(hsm: &Value) -> Result<Value, TranslateError> {
    let hsm = as_object(hsm, "hsm")?;
    let element_name = required_str(hsm, "hsm", "element_name")?;
    let code = hsm_language_code(hsm)?;

    let mut template = Map::new();
    template.insert("name".into(), Value::String(element_name.to_owned()));
    template.insert("language".into(), json!({ "code": code }));

    match hsm.get("localizable_params") {
        None | Some(Value::Null) => {}
        Some(Value::Array(params)) if params.is_empty() => {}
        Some(Value::Array(params)) => {
            let parameters = params
                .iter()
                .enumerate()
                .map(|(i, p)| hsm_param_to_cloud(p, &format!("hsm.localizable_params[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            template.insert(
                "components".into(),
                // Built directly: `json!` would serialize the parameters all over again.
                Value::Array(vec![Value::Object(Map::from_iter([
                    ("type".to_owned(), Value::from("body")),
                    ("parameters".to_owned(), Value::Array(parameters)),
                ]))]),
            );
        }
        Some(_) => {
            return Err(TranslateError::wrong_type(
                "hsm.localizable_params",
                "an array",
            ))
        }
    }
    Ok(Value::Object(template))
}

/// The Cloud `language.code` of an `hsm`. Clients older than On-Premise 2.21 sent no `language`
/// object: `fallback_lg` (or `fallback`) held the language (`en`, `pt`) and `fallback_lc` the
/// locale (`US`, `BR`); Cloud names the pair `en_US` / `pt_BR`, and the language alone when
/// there is no locale. Sending the locale alone would ask Cloud for a language called `US`
/// (132001, "template does not exist in the translation").
fn hsm_language_code(hsm: &Map<String, Value>) -> Result<String, TranslateError> {
    match hsm.get("language") {
        Some(Value::Object(language)) => {
            return Ok(required_str(language, "hsm.language", "code")?.to_owned())
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(TranslateError::wrong_type("hsm.language", "an object")),
    }
    let language = match optional_str(hsm, "hsm", "fallback_lg")? {
        Some(language) => Some(language),
        None => optional_str(hsm, "hsm", "fallback")?,
    }
    .map(str::trim)
    .filter(|l| !l.is_empty());
    let locale = optional_str(hsm, "hsm", "fallback_lc")?
        .map(str::trim)
        .filter(|l| !l.is_empty());
    match (language, locale) {
        // Some clients put the whole code in one field (`en_US`, or `pt-BR` as a browser
        // writes it): it already names language and locale.
        (_, Some(code)) | (Some(code), _) if code.contains(['_', '-']) => Ok(full_code(code)),
        (Some(language), Some(locale)) => Ok(format!(
            "{}_{}",
            language.to_ascii_lowercase(),
            locale.to_ascii_uppercase()
        )),
        (Some(language), None) => Ok(language.to_ascii_lowercase()),
        (None, Some(_)) => Err(TranslateError::missing(
            "hsm.fallback_lg (the language that goes with hsm.fallback_lc)",
        )),
        // No language at all: On-Premise took such hsms (seed-message-sender sent them for
        // years) with its default, English.
        (None, None) => Ok("en".to_owned()),
    }
}

/// `pt-br` / `pt_BR` as Cloud writes it: language lowercase, region uppercase.
fn full_code(code: &str) -> String {
    let (language, region) = code.split_once(['_', '-']).unwrap_or((code, ""));
    format!(
        "{}_{}",
        language.to_ascii_lowercase(),
        region.to_ascii_uppercase()
    )
}

fn hsm_param_to_cloud(param: &Value, path: &str) -> Result<Value, TranslateError> {
    let param = as_object(param, path)?;
    let default = optional_str(param, path, "default")?.filter(|d| !d.is_empty());

    if let Some(currency) = present(param, "currency") {
        let currency_path = join(path, "currency");
        let currency = as_object(currency, &currency_path)?;
        let code = required_str(currency, &currency_path, "currency_code")?;
        let amount_1000 = required_i64(currency, &currency_path, "amount_1000")?;
        let fallback_value = match default {
            Some(d) => d.to_owned(),
            None => render_currency(code, amount_1000),
        };
        return Ok(json!({
            "type": "currency",
            "currency": {"fallback_value": fallback_value, "code": code, "amount_1000": amount_1000}
        }));
    }
    if let Some(date_time) = present(param, "date_time") {
        let fallback_value = match default {
            Some(d) => d.to_owned(),
            None => render_date_time(date_time, &join(path, "date_time"))?,
        };
        return Ok(json!({"type": "date_time", "date_time": {"fallback_value": fallback_value}}));
    }
    match default {
        Some(text) => Ok(json!({"type": "text", "text": text})),
        None => Err(TranslateError::missing(join(path, "default"))),
    }
}

/// On-Premise `template` -> Cloud `template`: drops `namespace` and `language.policy`, reduces
/// `date_time` parameters to their fallback, and sends button `index`es as strings.
/// Everything else passes through untouched.
pub fn onprem_to_cloud_template(template: &Value) -> Result<Value, TranslateError> {
    let mut out = as_object(template, "template")?.clone();
    required_str(&out, "template", "name")?;
    out.remove("namespace");
    match out.get_mut("language") {
        Some(Value::Object(language)) => {
            language.remove("policy");
            required_str(language, "template.language", "code")?;
        }
        None | Some(Value::Null) => return Err(TranslateError::missing("template.language.code")),
        Some(_) => return Err(TranslateError::wrong_type("template.language", "an object")),
    }
    match out.get_mut("components") {
        None | Some(Value::Null) => {}
        Some(Value::Array(components)) => {
            for (i, component) in components.iter_mut().enumerate() {
                rewrite_component(component, &format!("template.components[{i}]"))?;
            }
        }
        Some(_) => {
            return Err(TranslateError::wrong_type(
                "template.components",
                "an array",
            ))
        }
    }
    Ok(Value::Object(out))
}

fn rewrite_component(component: &mut Value, path: &str) -> Result<(), TranslateError> {
    let Value::Object(component) = component else {
        return Err(TranslateError::wrong_type(path, "an object"));
    };
    // On-Premise examples used numbers; Cloud documents `index` as a string.
    if let Some(Value::Number(n)) = component.get("index") {
        let index = n.to_string();
        component.insert("index".into(), Value::String(index));
    }
    // A carousel's cards carry components of their own (a media header each).
    if let Some(Value::Array(cards)) = component.get_mut("cards") {
        for (k, card) in cards.iter_mut().enumerate() {
            if let Some(Value::Array(components)) = card.get_mut("components") {
                for (i, inner) in components.iter_mut().enumerate() {
                    rewrite_component(inner, &format!("{path}.cards[{k}].components[{i}]"))?;
                }
            }
        }
    }
    match component.get_mut("parameters") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(parameters)) => {
            for (i, parameter) in parameters.iter_mut().enumerate() {
                rewrite_parameter(parameter, &format!("{path}.parameters[{i}]"))?;
            }
            Ok(())
        }
        Some(_) => Err(TranslateError::wrong_type(
            join(path, "parameters"),
            "an array",
        )),
    }
}

fn rewrite_parameter(parameter: &mut Value, path: &str) -> Result<(), TranslateError> {
    let Value::Object(parameter) = parameter else {
        return Err(TranslateError::wrong_type(path, "an object"));
    };
    match parameter.get("type").and_then(Value::as_str) {
        // A header's media parameter may name On-Premise's `provider` like any media object;
        // Cloud refuses the key ("Unexpected key"). A configured provider's link was already
        // replaced by an uploaded id in the shell.
        Some(kind @ ("image" | "video" | "document")) => {
            let kind: &'static str = match kind {
                "image" => "image",
                "video" => "video",
                _ => "document",
            };
            if let Some(Value::Object(media)) = parameter.get_mut(kind) {
                media.remove("provider");
            }
        }
        Some("date_time") => {
            let date_time_path = join(path, "date_time");
            let Some(date_time) = present(parameter, "date_time") else {
                return Err(TranslateError::missing(date_time_path));
            };
            let given = as_object(date_time, &date_time_path)?;
            let fallback_value = match optional_str(given, &date_time_path, "fallback_value")? {
                Some(f) if !f.is_empty() => f.to_owned(),
                _ => render_date_time(date_time, &date_time_path)?,
            };
            parameter.insert(
                "date_time".into(),
                json!({ "fallback_value": fallback_value }),
            );
        }
        Some("currency") => {
            let currency_path = join(path, "currency");
            let currency = match parameter.get_mut("currency") {
                Some(Value::Object(currency)) => currency,
                None | Some(Value::Null) => return Err(TranslateError::missing(currency_path)),
                Some(_) => return Err(TranslateError::wrong_type(currency_path, "an object")),
            };
            let has_fallback =
                matches!(currency.get("fallback_value"), Some(Value::String(s)) if !s.is_empty());
            if !has_fallback {
                let code = required_str(currency, &currency_path, "code")?.to_owned();
                let amount_1000 = required_i64(currency, &currency_path, "amount_1000")?;
                currency.insert(
                    "fallback_value".into(),
                    Value::String(render_currency(&code, amount_1000)),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// `field` when it is present and not `null`.
fn present<'a>(map: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    map.get(field).filter(|v| !v.is_null())
}

fn required_i64(map: &Map<String, Value>, parent: &str, key: &str) -> Result<i64, TranslateError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(TranslateError::missing(join(parent, key))),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| TranslateError::wrong_type(join(parent, key), "an integer")),
        Some(_) => Err(TranslateError::wrong_type(join(parent, key), "an integer")),
    }
}

/// "USD 100.99" from `amount_1000: 100990`: the code and the amount with two decimals, rounded
/// half away from zero, computed in integers so no float rounding can creep in.
pub fn render_currency(code: &str, amount_1000: i64) -> String {
    let sign = if amount_1000 < 0 { "-" } else { "" };
    let cents = (i128::from(amount_1000).abs() + 5) / 10;
    format!("{code} {sign}{}.{:02}", cents / 100, cents % 100)
}

/// Renders a `date_time` object that has no usable fallback. Accepts the component parts flat,
/// nested under `component`, or a `unix_epoch.timestamp` / flat `timestamp` in seconds.
/// Localised month and weekday names are not reproduced: Cloud has no locale to render them in.
pub fn render_date_time(date_time: &Value, path: &str) -> Result<String, TranslateError> {
    let date_time = as_object(date_time, path)?;
    if let Some(epoch) = present(date_time, "unix_epoch") {
        let epoch_path = join(path, "unix_epoch");
        let epoch = as_object(epoch, &epoch_path)?;
        return render_epoch(required_i64(epoch, &epoch_path, "timestamp")?, &epoch_path);
    }
    if present(date_time, "timestamp").is_some() {
        return render_epoch(required_i64(date_time, path, "timestamp")?, path);
    }
    let (parts, parts_path) = match present(date_time, "component") {
        Some(component) => {
            let component_path = join(path, "component");
            (as_object(component, &component_path)?, component_path)
        }
        None => (date_time, path.to_owned()),
    };
    // Out-of-range parts would reach the end user verbatim in the rendered text.
    let part = |key: &str| -> Result<Option<i64>, TranslateError> {
        let (low, high) = match key {
            "year" => (0, 9999),
            "month" => (1, 12),
            "day_of_month" => (1, 31),
            "hour" => (0, 23),
            _ => (0, 59),
        };
        match parts.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => {
                let value = required_i64(parts, &parts_path, key)?;
                if !(low..=high).contains(&value) {
                    return Err(TranslateError::invalid(
                        join(&parts_path, key),
                        format!("must be between {low} and {high}, got {value}"),
                    ));
                }
                Ok(Some(value))
            }
        }
    };
    let date: Vec<String> = [
        part("year")?.map(|y| format!("{y:04}")),
        part("month")?.map(|m| format!("{m:02}")),
        part("day_of_month")?.map(|d| format!("{d:02}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let time = part("hour")?
        .map(|h| Ok::<_, TranslateError>(format!("{h:02}:{:02}", part("minute")?.unwrap_or(0))))
        .transpose()?;

    let mut rendered = date.join("-");
    if let Some(time) = time {
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        rendered.push_str(&time);
    }
    if rendered.is_empty() {
        return Err(TranslateError::invalid(
            path,
            "needs a fallback_value, component parts or a unix_epoch timestamp",
        ));
    }
    Ok(rendered)
}

fn render_epoch(timestamp: i64, path: &str) -> Result<String, TranslateError> {
    let at = OffsetDateTime::from_unix_timestamp(timestamp)
        .map_err(|_| TranslateError::invalid(join(path, "timestamp"), "is out of range"))?;
    Ok(format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    ))
}

/// A Graph template-management answer in the shape 360dialog's `/v1/configs/templates` gave
/// (which On-Premise clients of 360dialog read): a listing's `data` becomes `waba_templates`
/// with its counts; a created template is described by what was asked plus Graph's `id`,
/// `status` and `category`; anything else (a deletion's `{"success": true}`) stays as it is.
pub fn graph_to_360_templates(method: &str, request: Option<&Value>, answer: Value) -> Value {
    match (method, answer) {
        ("GET", Value::Object(mut answer)) if answer.get("data").is_some_and(Value::is_array) => {
            let templates = answer.remove("data").unwrap_or(Value::Array(Vec::new()));
            let count = templates.as_array().map_or(0, Vec::len);
            json!({
                "count": count, "filters": {}, "limit": count, "offset": 0,
                "sort": ["id"], "total": count, "waba_templates": templates,
            })
        }
        ("POST", Value::Object(answer)) => {
            let mut created = Map::new();
            if let Some(Value::Object(asked)) = request {
                for key in ["name", "language", "category", "components"] {
                    if let Some(value) = asked.get(key) {
                        created.insert(key.to_owned(), value.clone());
                    }
                }
            }
            created.extend(answer);
            Value::Object(created)
        }
        (_, answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_template_answers_take_360dialogs_shape() {
        let listed = graph_to_360_templates(
            "GET",
            None,
            json!({"data": [{"name": "a"}, {"name": "b"}], "paging": {"cursors": {}}}),
        );
        assert_eq!(listed["count"], 2);
        assert_eq!(listed["total"], 2);
        assert_eq!(listed["waba_templates"][1]["name"], "b");
        assert!(listed.get("data").is_none() && listed.get("paging").is_none());
        let asked = json!({"name": "n", "language": "en", "category": "UTILITY", "components": []});
        let created = graph_to_360_templates(
            "POST",
            Some(&asked),
            json!({"id": "77", "status": "PENDING", "category": "MARKETING"}),
        );
        assert_eq!(created["name"], "n");
        assert_eq!(created["id"], "77");
        // Graph's word on the category wins (it may re-categorize).
        assert_eq!(created["category"], "MARKETING");
        let deleted = graph_to_360_templates("DELETE", None, json!({"success": true}));
        assert_eq!(deleted, json!({"success": true}));
    }

    #[test]
    fn currency_renders_two_decimals_rounding_half_away_from_zero() {
        assert_eq!(render_currency("USD", 100_990), "USD 100.99");
        assert_eq!(render_currency("EUR", 1_005), "EUR 1.01");
        assert_eq!(render_currency("BRL", 0), "BRL 0.00");
        assert_eq!(render_currency("USD", -2_500), "USD -2.50");
    }

    #[test]
    fn epoch_renders_in_utc() {
        let rendered = render_date_time(&json!({"unix_epoch": {"timestamp": 1485470276}}), "p");
        assert_eq!(rendered.unwrap(), "2017-01-26 22:37 UTC");
    }

    #[test]
    fn component_without_hour_renders_the_date_only() {
        let v = json!({"component": {"year": 2026, "month": 3, "day_of_month": 7}});
        assert_eq!(render_date_time(&v, "p").unwrap(), "2026-03-07");
    }

    #[test]
    fn out_of_range_parts_are_rejected() {
        let v = json!({"component": {"year": 2020, "month": 13, "day_of_month": 1}});
        let err = render_date_time(&v, "p").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.component.month must be between 1 and 12, got 13"
        );
        let v = json!({"hour": 24, "minute": 0});
        assert!(render_date_time(&v, "p").is_err());
    }

    #[test]
    fn empty_date_time_is_rejected_with_its_path() {
        let err = render_date_time(&json!({"calendar": "GREGORIAN"}), "x.date_time").unwrap_err();
        assert!(err.to_string().starts_with("x.date_time needs"), "{err}");
    }
}
