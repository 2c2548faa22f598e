//! `waba-onprem-proxy translate METHOD PATH`: the pure translation, from the command line.
//! Reads the On-Premise body from stdin and prints what the proxy would send upstream.

use serde_json::Value;

use crate::routes::route;
use crate::translate::request::onprem_to_cloud_request;
use crate::translate::Meta;

/// Output line and exit code: 0 with `{"method","path","body","answered_locally"}`, or 2 with
/// the On-Premise error the server would have answered.
pub fn translate(method: &str, path: &str, body: &[u8], meta: &Meta) -> (Value, u8) {
    let method = method.to_ascii_uppercase();
    match onprem_to_cloud_request(&route(&method, path), &method, path, body, meta) {
        Ok(translated) => (translated.to_value(), 0),
        Err(error) => (error.to_body(meta), 2),
    }
}
