//! The tenant's lifecycle: the status column and its names.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Where a tenant is in its life. Mirrored by the CHECK constraints of
/// `migrations/*/0003_tenants.sql` and the diagram in README.md.
///
/// ```text
/// provisioning ──▶ active ──▶ suspended ──▶ deleted
///      │              ▲           │
///      ▼              └─restore───┘
///    failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// The slug is reserved and the provisioning saga is creating its resources.
    Provisioning,
    /// Every resource exists; its keys work.
    Active,
    /// Provisioning failed or was cancelled and everything it made was undone.
    Failed,
    /// Being deprovisioned: its keys do not authenticate, its runs were cancelled, and
    /// it waits out the retention period (a `restore` signal reactivates it).
    Suspended,
    /// Its database space, storage, keys and runs are gone; the record and the export
    /// remain.
    Deleted,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 5] = [
        TenantStatus::Provisioning,
        TenantStatus::Active,
        TenantStatus::Failed,
        TenantStatus::Suspended,
        TenantStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Failed => "failed",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown tenant status {s:?}"))
    }
}
