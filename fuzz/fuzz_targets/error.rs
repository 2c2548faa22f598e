#![no_main]
//! Any bytes as an upstream error answer, under every status.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use waba_onprem_proxy::translate::errors::cloud_to_onprem_error;
    let status = data.first().map(|b| 300 + u16::from(*b) * 2).unwrap_or(500);
    let _ = cloud_to_onprem_error(status, data);
});
