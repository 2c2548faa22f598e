#![no_main]
//! Any JSON as an inbound Cloud webhook, with every status relayed and with none.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use waba_onprem_proxy::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};
    if let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = cloud_to_onprem_webhook(envelope.clone(), WebhookOptions::default());
        let _ = cloud_to_onprem_webhook(envelope, WebhookOptions { sent: false, delivered: false, read: false });
    }
});
