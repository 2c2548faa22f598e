//! waba-onprem-proxy: lets an integration written for the WhatsApp Business **On-Premise** API
//! keep working, unchanged, against the **Cloud** API (through a BSP such as 360dialog).
//!
//! # Layout
//! - [`app`]: the parts every request shares, built once at start-up ([`app::AppState`]).
//! - [`config`]: flags and `WABA_PROXY_*` variables -> validated [`config::Config`].
//! - [`server`]: accept loop, connection cap, header-read timeout, graceful shutdown, SIGHUP.
//! - [`routes`]: pure route table, (method, On-Premise path) -> [`routes::Route`].
//! - [`handlers`]: one request end to end (limited body -> translate -> upstream -> back), with
//!   one module per area: media, profile (photo), providers, settings, webhooks.
//! - [`upstream`]: everything that leaves the proxy: `cloud` (the Cloud API, with the key),
//!   `outbound` (provider links and webhook receivers, never the key, within the link policy)
//!   and `dry_run` (the one place that mode lives).
//! - [`link_guard`]: the addresses fetches on a client's behalf may not reach (after DNS).
//! - [`body`]: the streaming bodies (multipart upload, media download).
//! - [`auth`]: the key map and login tokens.
//! - [`store`]: per-API-key JSON documents (providers, settings), kept in the database.
//! - [`relay`]: inbound webhooks -> group commit into the outbox (SQLite or PostgreSQL, see
//!   [`db`]) -> pipelined, fair delivery to the legacy URL; its delivery loop takes only what it
//!   uses ([`relay::Delivery`]), its scheduler (caps, turns, circuit breakers) is pure.
//! - [`db`]: the two storage backends behind one type; it knows no translation type and no
//!   relay.
//! - [`metrics`]: Prometheus metrics.
//! - [`clock`] and [`secret`]: the one clock, key hashing and constant-time comparison, at the
//!   bottom of the house so the layers above share them without importing one another.
//! - [`error`]: [`error::ProxyError`] and the one function deciding its On-Premise status.
//! - [`translate`]: the pure core, no I/O: `messages`, `templates` (hsm), `contacts`, `media`,
//!   `profile`, `settings`, `webhooks`, `errors`, `dryrun`, and `request` (whole requests and
//!   answers, shared with the `translate` command).
//! - [`cli`]: the `translate` subcommand.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod handlers;
pub mod link_guard;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod secret;
pub mod server;
pub mod store;
pub mod translate;
pub mod upstream;
