#![no_main]
//! Any JSON as an `hsm` object.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use waba_onprem_proxy::translate::templates::onprem_hsm_to_cloud_template;
    if let Ok(hsm) = serde_json::from_slice(data) {
        let _ = onprem_hsm_to_cloud_template(&hsm);
    }
});
