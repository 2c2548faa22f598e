#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the failure report

pub mod mock_upstream;
pub mod postgres;
pub mod proxy;
