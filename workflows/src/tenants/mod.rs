//! What the tenant sagas share: the tenant record and its resources (with their own SQL
//! on the engine's database, as the mail ledger does), plans and quotas, the tenant's
//! database space and its storage space.
//!
//! # Layout
//! - [`export`]: export files, JSON Lines streamed into the blob store.
//! - [`keys`]: the tenant's API keys as resources (revoke, then delete).
//! - [`names`]: schema, role, prefix and file names derived from a slug; quoting.
//! - [`plans`]: plans, quotas and `WAYMARK_TENANT_PLANS`.
//! - [`record`]: `waymark_tenants` and `waymark_tenant_resources`, the status enum, the
//!   installation id, and the deletion of a tenant's rows in Waymark's own tables.
//! - [`space`]: the database space: a schema and a NOLOGIN role on PostgreSQL, a file
//!   in embedded mode, each holding the tenant migration set
//!   (`workflows/tenant_migrations/`); its export as JSON Lines.
//! - [`storage`]: the storage space: a prefix of the blob store holding a manifest.
//!
//! Every operation that creates something finds what an earlier attempt created instead
//! of making a second one, and every removal tolerates what was never created: steps
//! and compensations run at least once.

pub mod export;
pub mod keys;
pub mod names;
pub mod plans;
pub mod record;
pub mod space;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use waymark_engine::keys::Sealer;
use waymark_engine::{ErrorKind, StepError, Store, StoreError};
use waymark_services::{BlobError, BlobStore, Mailer};

pub use plans::{Plan, Quota};
pub use record::{NewTenant, Resource, ResourceKind, Tenant, TenantStatus};

/// What went wrong with a tenant's record or resources. [`TenantError::kind`] says
/// whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant database error")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Retrying cannot help: what is there is not ours, or a rule forbids it.
    #[error("{0}")]
    Refused(String),
    /// Not yet: something must happen first (runs still ending).
    #[error("{0}")]
    NotYet(String),
}

impl TenantError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TenantError::Database(e) => sql_kind(e),
            TenantError::Store(StoreError::Database(e)) => sql_kind(e),
            TenantError::Store(StoreError::Corrupt(_) | StoreError::PayloadTooLarge { .. }) => {
                ErrorKind::Fatal
            }
            TenantError::Store(_) => ErrorKind::Retryable,
            TenantError::Blob(e) => e.kind(),
            TenantError::Io { .. } | TenantError::NotYet(_) => ErrorKind::Retryable,
            TenantError::Refused(_) => ErrorKind::Fatal,
        }
    }
}

impl From<TenantError> for StepError {
    fn from(error: TenantError) -> Self {
        StepError::from_error(error.kind(), &error)
    }
}

/// Permanent database errors (the same statement fails the same way again) are fatal;
/// connections, locks, serialisation and resource exhaustion are retryable.
fn sql_kind(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let permanent = if code.len() == 5 && !code.chars().all(|c| c.is_ascii_digit()) {
                // PostgreSQL SQLSTATE classes: data, integrity, syntax/access, feature,
                // authorization, invalid schema.
                ["22", "23", "42", "0A", "28", "2B", "3F"]
                    .iter()
                    .any(|class| code.starts_with(class))
            } else {
                // SQLite (extended) result codes: the primary code is the low byte.
                let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(0);
                matches!(primary, 1 | 11 | 19 | 20 | 25 | 26)
            };
            if permanent {
                ErrorKind::Fatal
            } else {
                ErrorKind::Retryable
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Configuration(_) => ErrorKind::Fatal,
        _ => ErrorKind::Retryable,
    }
}

/// What the tenant workflows need from the process: cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct TenantDeps {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    mailer: Mailer,
    blobs: BlobStore,
    sealer: Sealer,
    data_dir: PathBuf,
    retention: Duration,
    installation: OnceCell<String>,
}

impl TenantDeps {
    pub fn new(
        store: Store,
        mailer: Mailer,
        blobs: BlobStore,
        sealer: Sealer,
        data_dir: PathBuf,
        retention: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                mailer,
                blobs,
                sealer,
                data_dir,
                retention,
                installation: OnceCell::new(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn mailer(&self) -> &Mailer {
        &self.inner.mailer
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    pub fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    /// How long a deprovisioned tenant is kept (suspended, restorable) before deletion.
    pub fn retention(&self) -> Duration {
        self.inner.retention
    }

    /// This database's installation id (read once, then cached).
    pub async fn installation(&self) -> Result<&str, TenantError> {
        self.inner
            .installation
            .get_or_try_init(|| record::installation_id(&self.inner.store))
            .await
            .map(String::as_str)
    }
}
