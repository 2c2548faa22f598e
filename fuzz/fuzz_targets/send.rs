#![no_main]
//! Any bytes as a `POST /v1/messages` body: translated or refused, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use waba_onprem_proxy::translate::{messages::onprem_to_cloud_send, parse_body};
    if let Ok(body) = parse_body(data) {
        let _ = onprem_to_cloud_send(body);
    }
});
