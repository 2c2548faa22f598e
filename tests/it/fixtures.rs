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

use crate::support::mock_upstream::cloud_keys_check;

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
const AREAS: [&str; 7] = [
    "corpus_requests",
    "corpus_webhooks",
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
            "fixtures/{name} is not run by tests/it/fixtures.rs"
        );
    }
}

#[test]
fn messages_fixtures_translate_sends_to_cloud() {
    let mut failures = Vec::new();
    let cases = cases("messages");
    for (case, sides) in &cases {
        let input = read(&path("messages", case, "onprem"));
        let actual = match onprem_to_cloud_send(input.clone()) {
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
                if actual.0 == "cloud" {
                    check_cloud_keys(&mut failures, &file, &actual.1);
                }
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
    run_requests("requests");
}

/// Real client bodies, each with its `source`: the conformance corpus.
#[test]
fn corpus_requests_from_real_clients_translate_as_on_premise_meant_them() {
    run_requests("corpus_requests");
}

/// `requests`-shaped cases: `<case>.onprem.json` (`{"method","path","body"}`, in the corpus also
/// `{"source","shows","notes"}`) -> `<case>.cloud.json` (what `translate` prints) or
/// `<case>.error.json`. Every Cloud send produced is checked against Meta's key table.
fn run_requests(area: &str) {
    let mut failures = Vec::new();
    let cases = cases(area);
    for (case, sides) in &cases {
        let input = read(&path(area, case, "onprem"));
        check_source(&mut failures, area, case, &input);
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
            ["onprem"] => {
                bless(&mut failures, area, case, status, &actual);
                continue;
            }
            other => panic!("fixtures/{area}/{case}: orphan or extra files {other:?}"),
        };
        let file = path(area, case, expected_side);
        let expected = read(&file);
        match status {
            None => {
                if actual["path"] == "/messages" {
                    check_cloud_keys(&mut failures, &file, &actual["body"]);
                }
                check(&mut failures, &file, &expected, &actual)
            }
            Some(status) => check(
                &mut failures,
                &file,
                &expected,
                &error_value(status, actual),
            ),
        }
    }
    finish(area, cases.len(), failures);
}

/// A corpus case must say where it comes from, so a reader can check it.
fn check_source(failures: &mut Vec<String>, area: &str, case: &str, input: &Value) {
    if area.starts_with("corpus") {
        let cited = input["source"].as_str().is_some_and(|s| s.len() > 10)
            && input["shows"].as_str().is_some_and(|s| !s.is_empty());
        if !cited {
            failures.push(format!(
                "fixtures/{area}/{case}: a corpus case needs \"source\" and \"shows\""
            ));
        }
    }
}

/// A case with no expected side yet: with `WABA_FIXTURES_BLESS=1` the current answer is written
/// for review (never over an existing file); otherwise it is an orphan and fails.
fn bless(failures: &mut Vec<String>, area: &str, case: &str, status: Option<u16>, actual: &Value) {
    if std::env::var_os("WABA_FIXTURES_BLESS").is_none() {
        failures.push(format!("fixtures/{area}/{case}: orphan, no expected side"));
        return;
    }
    let (side, value) = match status {
        None => ("cloud", actual.clone()),
        Some(status) => ("error", error_value(status, actual.clone())),
    };
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    fs::write(path(area, case, side), text).unwrap();
}

/// Sends that name keys their place does not allow in Meta's OpenAPI table, by design: the
/// proxy passes unknown fields through for Cloud to judge (README, Decisions), so these bodies
/// keep what the client sent. Each is a case a reader can learn from.
const UNKNOWN_KEYS_PASSED_FOR_CLOUD_TO_JUDGE: [&str; 4] = [
    // A top-level field the proxy does not know.
    "text_unknown_top_level_fields_pass_through",
    "unknown_type_passes_through_for_cloud_to_judge",
    // ndoh-hub's outbound text carries `"random": "data"`.
    "ndoh_text_preview_render_mentions_extra_field",
    // gupshup's documentation spells the interactive header `Header`.
    "gupshup_doc_interactive_product_list_capital_header",
];

/// Checks a Cloud send body against the key table derived from Meta's OpenAPI document
/// (`tests/data/`): no On-Premise-only key anywhere, no key Cloud's objects do not have.
fn check_cloud_keys(failures: &mut Vec<String>, file: &Path, send: &Value) {
    let case = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .unwrap_or_default();
    let violations = cloud_keys_check::cloud_send_violations(send);
    if !violations.is_empty() && !UNKNOWN_KEYS_PASSED_FOR_CLOUD_TO_JUDGE.contains(&case) {
        failures.push(format!(
            "{}: keys Cloud does not accept there: {violations:?}",
            file.display()
        ));
    }
}

#[test]
fn the_cloud_key_table_accepts_cloud_bodies_and_refuses_on_premise_keys() {
    cloud_keys_check::self_check();
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
    run_webhooks("webhooks");
}

/// Cloud webhook posts from real sources (Meta's examples, client test data), each with its
/// `source`.
#[test]
fn corpus_webhooks_from_real_sources_reach_clients_in_on_premise_shape() {
    run_webhooks("corpus_webhooks");
}

/// `<case>.cloud.json` (a Cloud webhook post, or `{"_options"?,"envelope"}`, in the corpus with
/// `{"source","shows","notes"}`) -> `<case>.onprem.json` (`{"payloads","skipped"}`) or
/// `<case>.error.json` (refused).
fn run_webhooks(area: &str) {
    let mut failures = Vec::new();
    let cases = cases(area);
    for (case, sides) in &cases {
        let input = read(&path(area, case, "cloud"));
        check_source(&mut failures, area, case, &input);
        let (envelope, options) = match (input.get("envelope"), input.get("_options")) {
            // `_options` is the client's application settings document.
            (Some(envelope), options) => (
                envelope.clone(),
                options
                    .map(WebhookOptions::from_application_settings)
                    .unwrap_or_default(),
            ),
            (None, _) => (input.clone(), WebhookOptions::default()),
        };
        let result = cloud_to_onprem_webhook(envelope, options);
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
                let file = path(area, case, "onprem");
                check(&mut failures, &file, &read(&file), &actual);
            }
            (["cloud"], Ok(translation)) if std::env::var_os("WABA_FIXTURES_BLESS").is_some() => {
                let actual = json!({
                    "payloads": translation.payloads.iter().map(|p| p.body.clone()).collect::<Vec<_>>(),
                    "skipped": translation.skipped,
                });
                let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
                fs::write(path(area, case, "onprem"), text).unwrap();
            }
            (["cloud", "error"], Err(_)) => {}
            (["cloud", "error"], Ok(t)) => failures.push(format!(
                "fixtures/{area}/{case}: expected refusal, got {t:?}"
            )),
            (["cloud", "onprem"], Err(e)) => {
                failures.push(format!("fixtures/{area}/{case}: refused: {e}"))
            }
            (other, _) => panic!("fixtures/{area}/{case}: orphan or extra files {other:?}"),
        }
    }
    finish(area, cases.len(), failures);
}
