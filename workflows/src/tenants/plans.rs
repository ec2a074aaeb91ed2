//! Plans and their quotas: parsed from configuration (`WAYMARK_TENANT_PLANS`), kept in
//! `waymark_tenant_plans` so every process and the API see the same set, and copied
//! into a tenant when it is created.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use waymark_engine::store::Arg;
use waymark_engine::Store;

/// What a plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Bytes the tenant may keep in its storage space.
    pub storage_bytes: u64,
    /// Runs the tenant may start; `None` is unlimited.
    pub runs: Option<u64>,
}

/// A plan: a name and its quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub quota: Quota,
}

/// The plans of a fresh installation, as `WAYMARK_TENANT_PLANS` writes them.
pub const DEFAULT_PLANS: &str = "free:1GiB:1000,pro:100GiB:100000,enterprise:1TiB:unlimited";

/// Parses `name:storage:runs` entries separated by commas, e.g.
/// `free:1GiB:1000,pro:100GiB:100000,enterprise:1TiB:unlimited`. Storage takes B, KB,
/// MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024); runs a count or
/// `unlimited`. Names follow `^[a-z][a-z0-9-]{0,31}$` and appear once.
pub fn parse_plans(text: &str) -> Result<Vec<Plan>, String> {
    let mut plans: Vec<Plan> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
        let [name, storage, runs] = parts[..] else {
            return Err(format!(
                "plan {entry:?}: expected name:storage:runs (e.g. pro:100GiB:100000)"
            ));
        };
        if !is_plan_name(name) {
            return Err(format!(
                "plan {entry:?}: the name must match ^[a-z][a-z0-9-]{{0,31}}$"
            ));
        }
        if plans.iter().any(|p| p.name == name) {
            return Err(format!("plan {name:?} is listed twice"));
        }
        let storage_bytes =
            parse_bytes(storage).map_err(|e| format!("plan {name:?}: storage {e}"))?;
        let runs = match runs {
            "unlimited" => None,
            n => Some(
                n.parse::<u64>()
                    .ok()
                    .filter(|n| i64::try_from(*n).is_ok())
                    .ok_or_else(|| {
                        format!("plan {name:?}: runs {n:?} is not a count or `unlimited`")
                    })?,
            ),
        };
        plans.push(Plan {
            name: name.to_owned(),
            quota: Quota {
                storage_bytes,
                runs,
            },
        });
    }
    if plans.is_empty() {
        return Err("at least one plan is needed".into());
    }
    Ok(plans)
}

/// Whether `name` may name a plan: `^[a-z][a-z0-9-]{0,31}$`.
pub fn is_plan_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// `1GiB`, `500MB`, `1024` → bytes (at most `i64::MAX`, what the database holds).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(format!("{text:?} has an unknown unit {other:?}")),
    };
    number
        .checked_mul(factor)
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Replaces the stored plans with `plans` (tenants keep the quotas they were created
/// with). Every process of an installation should be given the same plans.
pub async fn sync(store: &Store, plans: &[Plan], now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut tx = store.begin().await.map_err(sqlx::Error::from)?;
    let names: Vec<Arg> = plans.iter().map(|p| Arg::text(&p.name)).collect();
    let kept = waymark_engine::store::sql::placeholders(names.len());
    let delete = if names.is_empty() {
        "DELETE FROM waymark_tenant_plans".to_owned()
    } else {
        format!("DELETE FROM waymark_tenant_plans WHERE name NOT IN ({kept})")
    };
    tx.execute(&delete, &names)
        .await
        .map_err(sqlx::Error::from)?;
    for plan in plans {
        tx.execute(
            "INSERT INTO waymark_tenant_plans (name, storage_bytes, runs, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET storage_bytes = excluded.storage_bytes, \
               runs = excluded.runs, updated_at = excluded.updated_at",
            &[
                Arg::text(&plan.name),
                Arg::int(plan.quota.storage_bytes as i64),
                Arg::Int(plan.quota.runs.map(|r| r as i64)),
                Arg::time(now),
            ],
        )
        .await
        .map_err(sqlx::Error::from)?;
    }
    tx.commit().await.map_err(sqlx::Error::from)
}

/// Every stored plan, by name.
pub async fn list(store: &Store) -> Result<Vec<Plan>, sqlx::Error> {
    let sql = "SELECT name, storage_bytes, runs FROM waymark_tenant_plans ORDER BY name";
    let rows = store.sql_fetch(sql, &[]).await.map_err(sqlx::Error::from)?;
    rows.iter()
        .map(|r| {
            plan_from(
                r.text("name").map_err(sqlx::Error::from)?,
                r.int("storage_bytes").map_err(sqlx::Error::from)?,
                r.opt_int("runs").map_err(sqlx::Error::from)?,
            )
        })
        .collect()
}

/// The plan called `name`, if there is one.
pub async fn get(store: &Store, name: &str) -> Result<Option<Plan>, sqlx::Error> {
    Ok(list(store).await?.into_iter().find(|p| p.name == name))
}

fn plan_from(name: String, storage: i64, runs: Option<i64>) -> Result<Plan, sqlx::Error> {
    let unsigned = |v: i64| {
        u64::try_from(v).map_err(|_| sqlx::Error::Decode(format!("negative quota {v}").into()))
    };
    Ok(Plan {
        name,
        quota: Quota {
            storage_bytes: unsigned(storage)?,
            runs: runs.map(unsigned).transpose()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plans_parse_to_free_pro_and_enterprise() {
        let plans = parse_plans(DEFAULT_PLANS).unwrap();
        let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["free", "pro", "enterprise"]);
        assert_eq!(plans[0].quota.storage_bytes, 1 << 30);
        assert_eq!(plans[0].quota.runs, Some(1000));
        assert_eq!(plans[2].quota.storage_bytes, 1 << 40);
        assert_eq!(plans[2].quota.runs, None);
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("5MB").unwrap(), 5_000_000);
        assert_eq!(parse_bytes("5MiB").unwrap(), 5 * 1024 * 1024);
        assert_eq!(parse_bytes("2TB").unwrap(), 2_000_000_000_000);
        for bad in ["", "GiB", "1 PiB", "1.5GiB", "-1", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_plan_lists_are_refused_with_the_entry_named() {
        for (bad, mentions) in [
            ("", "at least one"),
            ("free:1GiB", "name:storage:runs"),
            ("Free:1GiB:10", "name must match"),
            ("free:1GiB:10,free:2GiB:20", "twice"),
            ("free:lots:10", "storage"),
            ("free:1GiB:many", "runs"),
        ] {
            let error = parse_plans(bad).unwrap_err();
            assert!(error.contains(mentions), "{bad:?}: {error}");
        }
    }

    #[test]
    fn spaces_around_entries_are_ignored() {
        let plans = parse_plans(" team : 10GiB : 50 , ").unwrap();
        assert_eq!(
            plans,
            vec![Plan {
                name: "team".into(),
                quota: Quota {
                    storage_bytes: 10 << 30,
                    runs: Some(50)
                }
            }]
        );
    }
}
