//! The HTTP API through real HTTP, against a server on port 0, on both backends:
//! happy paths, a table of bad inputs per route, tenant isolation, scopes, revoked and
//! expired keys, OpenAPI coverage, long-poll and bulk actions.
//!
//! # Layout
//! - [`runs`]: starting, reading, signalling and acting on runs, one by one and in bulk.
//! - [`keys`]: keys, their scopes and tenants, reveals, suspension, rate limits.
//! - [`bad_input`]: every route's refusals of bad input and missing keys.
//! - [`service`]: what the service says about itself: workflows, workers, metrics,
//!   diagrams, OpenAPI, readiness, listing.

mod bad_input;
mod keys;
mod runs;
mod service;
