//! Waymark's integration tests: one binary, one module per feature, run against a real
//! PostgreSQL (each test creates and drops its own database) and embedded SQLite.
//!
//! `./test.sh` makes sure PostgreSQL is up before running them; without it the
//! PostgreSQL tests fail with a message saying how to get one, never skip.

mod support;

mod api;
mod binary;
mod blobs;
mod browser;
mod conformance;
mod coverage;
mod dashboard;
mod dashboard_pages;
mod dashboard_schedules;
mod disputes;
mod engine;
mod exports;
mod key_rotation;
mod long_poll;
mod mail;
mod meetings;
mod pagination;
mod schedules;
mod schemas;
mod security;
mod semantics;
mod tenants;
mod videos;
