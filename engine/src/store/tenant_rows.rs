//! What a tenant's offboarding asks of the engine's own tables: how many of its runs
//! still live, and deleting its ended runs and its keys. Kept here, beside the tables,
//! so the workflows that offboard a tenant never write the engine's rows themselves.
//! One statement text serves both backends (see [`super::sql`]).

use uuid::Uuid;

use super::sql::{Arg, Tx};
use super::{Store, StoreResult};

impl Store {
    /// How many of `tenant`'s runs have not ended.
    pub async fn runs_live_count(&self, tenant: &str) -> StoreResult<i64> {
        let rows = self
            .sql_fetch(
                "SELECT count(*) AS live FROM waymark_runs WHERE tenant = $1 AND finished_at IS NULL",
                &[Arg::text(tenant)],
            )
            .await?;
        match rows.first() {
            Some(row) => row.int("live"),
            None => Ok(0),
        }
    }

    /// Deletes up to `batch` of `tenant`'s ended runs (their history, signals,
    /// compensations and tags go with them) in the caller's transaction, so what refers
    /// to them elsewhere (a mail ledger row) can go in the same commit. The ids deleted.
    pub async fn runs_delete_ended_in(
        &self,
        tx: &mut Tx,
        tenant: &str,
        batch: u32,
    ) -> StoreResult<Vec<Uuid>> {
        tx.fetch(
            "DELETE FROM waymark_runs WHERE id IN ( \
               SELECT id FROM waymark_runs WHERE tenant = $1 AND finished_at IS NOT NULL \
               ORDER BY id LIMIT $2) \
             RETURNING id",
            &[Arg::text(tenant), Arg::int(batch.into())],
        )
        .await?
        .iter()
        .map(|row| row.id("id"))
        .collect()
    }

    /// Deletes `tenant`'s key rows made by `created_by`, or all of them (revoke them
    /// first, so the audit log says so). How many went.
    pub async fn keys_delete(&self, tenant: &str, created_by: Option<&str>) -> StoreResult<u64> {
        self.sql_execute(
            "DELETE FROM waymark_keys WHERE tenant = $1 AND ($2 IS NULL OR created_by = $2)",
            &[Arg::text(tenant), Arg::Text(created_by.map(str::to_owned))],
        )
        .await
    }
}
