//! One table test over every golden pair in `fixtures/`. Adding a case needs no Rust: drop two
//! sibling files into an area folder. Orphans and empty folders fail the run, so fixtures cannot
//! silently stop running.
//!
//! Areas:
//! - `messages/<case>.onprem.json` (send body) -> `<case>.cloud.json` (upstream body) or
//!   `<case>.error.json` (`{"status","body"}` answered to the client);
//! - `requests/<case>.onprem.json` (`{"method","path","body"}`) -> `<case>.cloud.json` (what the
//!   `translate` command prints) or `<case>.error.json`;
//! - `media_providers/<case>.onprem.json` (a providers POST body) -> `<case>.stored.json` (what
//!   the proxy keeps) or `<case>.error.json`;
//! - `webhooks/<case>.cloud.json` (a Cloud webhook post, or `{"_options","envelope"}` where
//!   `_options` is the client's application settings) ->
//!   `<case>.onprem.json` (`{"payloads","skipped"}`) or `<case>.error.json` (refused);
//! - `responses/<case>.cloud.json` (`{"route","status","body"|"body_text"}`) ->
//!   `<case>.onprem.json` (`{"status","body"}`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use waba_onprem_proxy::error::{ProxyError, Unreadable};
use waba_onprem_proxy::routes::{route, Route};
use waba_onprem_proxy::translate::errors::onprem_error_for;
use waba_onprem_proxy::translate::media::onprem_media_providers;
use waba_onprem_proxy::translate::messages::onprem_to_cloud_send;
use waba_onprem_proxy::translate::request::{cloud_to_onprem_response, onprem_to_cloud_request};
use waba_onprem_proxy::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};
use waba_onprem_proxy::translate::Meta;

fn meta() -> Meta {
    Meta::new("v2.53.0")
}

fn read(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Case name -> the suffixes present (`onprem`, `cloud`, `error`).
fn cases(area: &str) -> BTreeMap<String, Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(area);
    let mut cases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("fixtures/{area}/{name}: not a .json file"));
        let (case, side) = stem
            .rsplit_once('.')
            .unwrap_or_else(|| panic!("fixtures/{area}/{name}: expected <case>.<side>.json"));
        cases
            .entry(case.to_owned())
            .or_default()
            .push(side.to_owned());
    }
    assert!(!cases.is_empty(), "fixtures/{area} is empty");
    for sides in cases.values_mut() {
        sides.sort();
    }
    cases
}

fn path(area: &str, case: &str, side: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(area)
        .join(format!("{case}.{side}.json"))
}

/// Compares and records a readable mismatch instead of stopping at the first one.
fn check(failures: &mut Vec<String>, file: &Path, expected: &Value, actual: &Value) {
    if expected != actual {
        failures.push(format!(
            "{}\n--- expected\n{}\n--- actual\n{}\n",
            file.display(),
            serde_json::to_string_pretty(expected).unwrap(),
            serde_json::to_string_pretty(actual).unwrap()
        ));
    }
}

fn finish(area: &str, count: usize, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} of {count} fixtures in {area} differ:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn error_value(status: u16, body: Value) -> Value {
    json!({"status": status, "body": body})
}

/// The areas this file runs. A folder that is not one of them would never run: that fails.
const AREAS: [&str; 5] = [
    "media_providers",
    "messages",
    "requests",
    "responses",
    "webhooks",
];

#[test]
fn every_fixture_folder_is_an_area_that_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for entry in fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(
            entry.path().is_dir(),
            "fixtures/{name}: only area folders belong here"
        );
        assert!(
            AREAS.contains(&name.as_str()),
            "fixtures/{name} is not run by tests/fixtures.rs"
        );
    }
}

#[test]
fn messages_fixtures_translate_sends_to_cloud() {
    let mut failures = Vec::new();
    let cases = cases("messages");
    for (case, sides) in &cases {
        let input = read(&path("messages", case, "onprem"));
        let actual = match onprem_to_cloud_send(&input) {
            Ok(cloud) => ("cloud", cloud),
            Err(e) => {
                let error = onprem_error_for(&e);
                ("error", error_value(error.status, error.to_body(&meta())))
            }
        };
        match sides
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["cloud", "onprem"] | ["error", "onprem"] => {
                let expected_side = if sides.contains(&"cloud".to_owned()) {
                    "cloud"
                } else {
                    "error"
                };
                let file = path("messages", case, expected_side);
                check(
                    &mut failures,
                    &file,
                    &read(&file),
                    &json!({ actual.0: actual.1 })[actual.0],
                );
                if expected_side != actual.0 {
                    failures.push(format!(
                        "{}: expected {expected_side}, got {}",
                        file.display(),
                        actual.0
                    ));
                }
            }
            other => panic!("fixtures/messages/{case}: orphan or extra files {other:?}"),
        }
    }
    finish("messages", cases.len(), failures);
}

#[test]
fn requests_fixtures_match_the_translate_command() {
    let mut failures = Vec::new();
    let cases = cases("requests");
    for (case, sides) in &cases {
        let input = read(&path("requests", case, "onprem"));
        let method = input["method"].as_str().expect("method");
        let req_path = input["path"].as_str().expect("path");
        let body = match &input["body"] {
            Value::Null => Vec::new(),
            Value::String(raw) if input["body_is_raw"] == json!(true) => raw.clone().into_bytes(),
            body => serde_json::to_vec(body).unwrap(),
        };
        let routed = route(method, req_path);
        let (actual, status) =
            match onprem_to_cloud_request(&routed, method, req_path, &body, &meta()) {
                Ok(translated) => (translated.to_value(), None),
                Err(error) => (error.to_body(&meta()), Some(error.status)),
            };
        let expected_side = match sides
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["cloud", "onprem"] => "cloud",
            ["error", "onprem"] => "error",
            other => panic!("fixtures/requests/{case}: orphan or extra files {other:?}"),
        };
        let file = path("requests", case, expected_side);
        let expected = read(&file);
        match status {
            None => check(&mut failures, &file, &expected, &actual),
            Some(status) => check(
                &mut failures,
                &file,
                &expected,
                &error_value(status, actual),
            ),
        }
    }
    finish("requests", cases.len(), failures);
}

#[test]
fn responses_fixtures_translate_cloud_answers_back() {
    let mut failures = Vec::new();
    let cases = cases("responses");
    for (case, sides) in &cases {
        if sides != &["cloud".to_owned(), "onprem".to_owned()] {
            panic!("fixtures/responses/{case}: orphan or extra files {sides:?}");
        }
        let input = read(&path("responses", case, "cloud"));
        let route = match input["route"].as_str() {
            Some("send_message") => Route::SendMessage,
            Some("mark_read") => Route::MarkRead {
                message_id: "wamid.fixture".into(),
            },
            Some("pass_through") => Route::PassThrough,
            Some("upload_media") => Route::UploadMedia,
            Some("business_profile_get") => Route::BusinessProfileGet,
            Some("business_profile_post") => Route::BusinessProfilePost,
            Some("about_get") => Route::AboutGet,
            Some("about_patch") => Route::AboutPatch,
            Some("photo_link_get") => Route::PhotoGet { link: true },
            Some("download_media") => Route::DownloadMedia {
                media_id: "999".into(),
            },
            Some("delete_media") => Route::DeleteMedia {
                media_id: "999".into(),
            },
            other => panic!("fixtures/responses/{case}: unknown route {other:?}"),
        };
        let status = input["status"].as_u64().expect("status") as u16;
        let body = match (&input.get("body"), &input.get("body_text")) {
            (Some(body), None) => serde_json::to_vec(body).unwrap(),
            (None, Some(Value::String(text))) => text.clone().into_bytes(),
            _ => panic!("fixtures/responses/{case}: needs exactly one of body, body_text"),
        };
        let actual = match cloud_to_onprem_response(&route, status, &body, &meta()) {
            Ok((status, body)) => error_value(status, body),
            Err(e) => {
                let error = ProxyError::UpstreamUnreadable(Unreadable::Shape(e)).to_onprem();
                error_value(error.status, error.to_body(&meta()))
            }
        };
        let file = path("responses", case, "onprem");
        check(&mut failures, &file, &read(&file), &actual);
    }
    finish("responses", cases.len(), failures);
}

#[test]
fn media_providers_fixtures_validate_what_clients_register() {
    let mut failures = Vec::new();
    let cases = cases("media_providers");
    for (case, sides) in &cases {
        let input = read(&path("media_providers", case, "onprem"));
        let (side, actual) = match onprem_media_providers(&input) {
            Ok(stored) => ("stored", Value::Array(stored)),
            Err(e) => {
                let error = onprem_error_for(&e);
                ("error", error_value(error.status, error.to_body(&meta())))
            }
        };
        let expected_side = match sides
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["onprem", "stored"] => "stored",
            ["error", "onprem"] => "error",
            other => panic!("fixtures/media_providers/{case}: orphan or extra files {other:?}"),
        };
        let file = path("media_providers", case, expected_side);
        if side != expected_side {
            failures.push(format!(
                "{}: expected {expected_side}, got {side}: {actual}",
                file.display()
            ));
            continue;
        }
        check(&mut failures, &file, &read(&file), &actual);
    }
    finish("media_providers", cases.len(), failures);
}

#[test]
fn webhooks_fixtures_translate_cloud_events_to_onprem_payloads() {
    let mut failures = Vec::new();
    let cases = cases("webhooks");
    for (case, sides) in &cases {
        let input = read(&path("webhooks", case, "cloud"));
        let (envelope, options) = match input.get("_options") {
            Some(options) => (
                input["envelope"].clone(),
                // `_options` is the client's application settings document.
                WebhookOptions::from_application_settings(options),
            ),
            None => (input.clone(), WebhookOptions::default()),
        };
        let result = cloud_to_onprem_webhook(&envelope, options);
        match (
            sides
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            result,
        ) {
            (["cloud", "onprem"], Ok(translation)) => {
                let actual = json!({
                    "payloads": translation.payloads.iter().map(|p| p.body.clone()).collect::<Vec<_>>(),
                    "skipped": translation.skipped,
                });
                let file = path("webhooks", case, "onprem");
                check(&mut failures, &file, &read(&file), &actual);
            }
            (["cloud", "error"], Err(_)) => {}
            (["cloud", "error"], Ok(t)) => failures.push(format!(
                "fixtures/webhooks/{case}: expected refusal, got {t:?}"
            )),
            (["cloud", "onprem"], Err(e)) => {
                failures.push(format!("fixtures/webhooks/{case}: refused: {e}"))
            }
            (other, _) => panic!("fixtures/webhooks/{case}: orphan or extra files {other:?}"),
        }
    }
    finish("webhooks", cases.len(), failures);
}
