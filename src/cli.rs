//! `waba-onprem-proxy translate METHOD PATH`: the pure translation, from the command line.
//! Reads the On-Premise body from stdin and prints what the proxy would send upstream.

use serde_json::Value;

use crate::accounts::Account;
use crate::routes::route;
use crate::translate::errors::OnPremError;
use crate::translate::request::{onprem_to_cloud_request, Translated};
use crate::translate::Meta;
use crate::upstream::graph::target;

/// Output line and exit code: 0 with `{"method","path","body","answered_locally"}`, or 2 with
/// the On-Premise error the server would have answered.
/// With `graph`, the path is the Graph API's for that account (ids shown as placeholders
/// when none is given).
pub fn translate(
    method: &str,
    path: &str,
    body: &[u8],
    meta: &Meta,
    graph: Option<&Account>,
) -> (Value, u8) {
    let method = method.to_ascii_uppercase();
    match onprem_to_cloud_request(&route(&method, path), &method, path, body, meta) {
        Ok(Translated::Upstream(mut cloud)) if graph.is_some() => {
            let verb = http::Method::from_bytes(cloud.method.as_bytes()).unwrap_or_default();
            match graph.map(|account| target(account, &verb, &cloud.path)) {
                Some(Ok(target)) => {
                    cloud.path = target.path_and_query;
                    (Translated::Upstream(cloud).to_value(), 0)
                }
                Some(Err(unmapped)) => (
                    OnPremError::new(501, 1000, unmapped.to_string()).to_body(meta),
                    2,
                ),
                None => (Value::Null, 2),
            }
        }
        Ok(translated) => (translated.to_value(), 0),
        Err(error) => (error.to_body(meta), 2),
    }
}
