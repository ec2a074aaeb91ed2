//! The business processes Waymark ships with, one module per workflow.
//!
//! # Layout
//! - [`demo`]: a small tutorial workflow (work, an optional durable timer, a greeting)
//!   that a newcomer can start against a fresh `cargo run --release`.
//! - [`housekeeping`]: `waymark.retention`, run by a built-in schedule.
//! - [`key_rotation`]: rotates Waymark's own API keys through a grace period.
//! - [`meetings`]: `meeting_invite`, iCalendar invitations, RSVPs, reminders per
//!   attendee zone, updates and cancellations of a meeting or one occurrence.
//! - [`tenant_provisioning`], [`tenant_deprovisioning`]: onboarding and offboarding a
//!   customer as sagas (database space, storage space, admin key, welcome email).
//! - [`disputes`]: `payment_dispute`, a card payment's dispute driven by signed
//!   webhooks, evidence deadlines and the card network's decision.
//! - [`videos`]: video ingest; so far the resumable (tus) uploads it starts from.
//! - [`tenants`]: what those two share: the tenant record and its SQL, plans and quotas,
//!   the database space and the storage space.
//!
//! [`registry`] registers every built-in workflow with the [`Deps`] they need;
//! `waymark` serves exactly these.

pub mod demo;
pub mod disputes;
pub mod housekeeping;
pub mod key_rotation;
pub mod meetings;
pub mod tenant_deprovisioning;
pub mod tenant_provisioning;
pub mod tenants;
pub mod videos;

use std::path::PathBuf;
use std::time::Duration;

use waymark_engine::keys::Sealer;
use waymark_engine::store::Schema;
use waymark_engine::workflow::{Registry, RegistryError};
use waymark_engine::Store;
use waymark_services::{BlobStore, Mailer};

/// What the built-in workflows need from the process that runs them.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The engine's store: the tenant sagas keep their records in its database.
    pub store: Store,
    pub mailer: Mailer,
    pub blobs: BlobStore,
    /// Seals new tenants' admin key secrets until their one reveal.
    pub sealer: Sealer,
    /// `WAYMARK_DATA_DIR`: tenants' database files in embedded mode.
    pub data_dir: PathBuf,
    /// `WAYMARK_TENANT_RETENTION`: how long a deprovisioned tenant stays restorable.
    pub tenant_retention: Duration,
    /// How scheduled key rotations wait for their reveal and remind.
    pub rotation: key_rotation::RotationSettings,
    /// The card network disputes are submitted to (or the embedded simulator).
    pub dispute_network: disputes::network::Network,
    pub disputes: disputes::DisputeSettings,
    /// Where meeting attendees reach Waymark (RSVP links).
    pub meetings: meetings::MeetingSettings,
}

/// The tables of the built-in workflows, one [`Schema`] per workflow that keeps its own
/// (see `waymark_engine::store::schemas`). `waymark` hands them to its store, so
/// `waymark migrate` applies them after the engine's and `/readyz` waits for them.
pub fn schemas() -> Vec<Schema> {
    vec![disputes::SCHEMA, meetings::SCHEMA, videos::SCHEMA]
}

/// Every table of the workflows' schemas that holds a tenant's rows (by a `tenant`
/// column), in the order deleting a tenant empties them: when a tenant is deleted for
/// good, `tenant_deprovisioning` deletes its rows from each. A workflow with tables of
/// its own lists them here.
pub fn tenant_tables() -> Vec<&'static str> {
    [
        disputes::TENANT_TABLES,
        meetings::TENANT_TABLES,
        videos::TENANT_TABLES,
    ]
    .concat()
}

/// Every workflow Waymark ships with, registered here and nowhere else.
pub fn registry(deps: Deps) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register(demo::Demo)?;
    registry.register(
        housekeeping::Retention::new(deps.store.clone()).with_uploads(videos::uploads::Uploads {
            store: deps.store.clone(),
            blobs: deps.blobs.clone(),
            settings: Default::default(),
        }),
    )?;
    registry.register(key_rotation::KeyRotation {
        store: deps.store.clone(),
        mailer: deps.mailer.clone(),
        sealer: deps.sealer.clone(),
        settings: deps.rotation,
    })?;
    registry.register(disputes::PaymentDispute {
        store: deps.store.clone(),
        mailer: deps.mailer.clone(),
        network: deps.dispute_network,
        blobs: deps.blobs.clone(),
        sealer: deps.sealer.clone(),
        settings: deps.disputes,
    })?;
    registry.register(meetings::MeetingInvite {
        store: deps.store.clone(),
        mailer: deps.mailer.clone(),
        settings: deps.meetings,
    })?;
    let tenants = tenants::TenantDeps::new(
        deps.store,
        deps.mailer,
        deps.blobs,
        deps.sealer,
        deps.data_dir,
        deps.tenant_retention,
    );
    registry.register(tenant_provisioning::TenantProvisioning::new(
        tenants.clone(),
    ))?;
    registry.register(tenant_deprovisioning::TenantDeprovisioning::new(tenants))?;
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
            .map_err(|e| format!("invalid duration {text:?}: {e}"))
            .and_then(waymark_engine::workflow::check_duration)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
