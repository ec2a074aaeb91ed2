//! Waymark's workers: the process loop that claims due runs and drives their steps.
//!
//! # Layout
//! - [`Runner`]: claims runs in batches under fenced leases, runs each step with its
//!   timeout and cancellation token, commits what it returned, keeps the lease when the
//!   next state is due at once, and releases everything it holds on shutdown.
//! - One heartbeat task per runner extends the leases of all its runs in one statement
//!   and cancels any step whose lease it finds lost.
//!
//! - [`scheduler`]: fires schedules' due times exactly once, under a lease row.
//!
//! Persistence rules live in `waymark-engine`; this crate only decides *when*.

mod runner;
pub mod scheduler;

pub use runner::{Runner, RunnerConfig, RunnerError};
