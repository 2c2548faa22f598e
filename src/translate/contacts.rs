//! `POST /v1/contacts`: answered locally. Since On-Premise 2.43 the check always answered
//! `valid`, and Cloud has no equivalent endpoint, so no upstream call is made.

use serde_json::{json, Value};

use super::{as_object, Meta, TranslateError};

/// `blocking` and `force_check` are accepted and ignored, as On-Premise did after 2.43.
pub fn onprem_contacts_answer(body: &Value, meta: &Meta) -> Result<Value, TranslateError> {
    let body = match body {
        Value::Null => return Err(TranslateError::missing("contacts")),
        other => as_object(other, "request body")?,
    };
    let inputs = match body.get("contacts") {
        None | Some(Value::Null) => return Err(TranslateError::missing("contacts")),
        Some(Value::Array(inputs)) if inputs.is_empty() => {
            return Err(TranslateError::missing("contacts"))
        }
        Some(Value::Array(inputs)) => inputs,
        Some(_) => return Err(TranslateError::wrong_type("contacts", "an array")),
    };
    let contacts = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let input = input
                .as_str()
                .ok_or_else(|| TranslateError::wrong_type(format!("contacts[{i}]"), "a string"))?;
            let wa_id: String = input.chars().filter(char::is_ascii_digit).collect();
            Ok(json!({"input": input, "status": "valid", "wa_id": wa_id}))
        })
        .collect::<Result<Vec<_>, TranslateError>>()?;
    Ok(json!({"contacts": contacts, "meta": meta.to_value()}))
}
