//! The business processes Waymark ships with, one module per workflow.
//!
//! # Layout
//! - [`demo`]: a small tutorial workflow (work, an optional durable timer, a greeting)
//!   that a newcomer can start against a fresh `cargo run --release`.
//! - [`housekeeping`]: `waymark.retention`, run by a built-in schedule.
//!
//! [`registry`] registers every built-in workflow; `waymark` serves exactly these.

pub mod demo;
pub mod housekeeping;

use waymark_engine::workflow::{Registry, RegistryError};

/// Every workflow Waymark ships with.
pub fn registry() -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register(demo::Demo)?;
    Ok(registry)
}

/// Serde helpers for human-friendly durations (`"90s"`, `"24h"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}
