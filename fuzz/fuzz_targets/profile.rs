#![no_main]
//! Any JSON as a business profile update.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use waba_onprem_proxy::translate::profile::onprem_to_cloud_business_profile;
    if let Ok(profile) = serde_json::from_slice(data) {
        let _ = onprem_to_cloud_business_profile(&profile);
    }
});
