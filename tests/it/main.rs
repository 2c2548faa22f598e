//! The integration tests, one binary: the support code (mock upstream, spawn helpers,
//! throwaway PostgreSQL) compiles once for all of them. Each module is one area:
//! `cargo test --test it <module>::` runs one (e.g. `cargo test --test it media::`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

#[macro_use]
mod support;

mod console;
mod crash;
mod database;
mod deploy;
mod fixtures;
mod graph;
mod legacy_client;
mod media;
mod mock_graph_selftest;
mod mock_upstream_selftest;
mod postgres_support;
mod properties;
mod proxy;
mod relay;
mod replicas;
mod settings;
mod webhooks;
