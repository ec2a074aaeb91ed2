//! Workflows' own tables (`store::schemas`): applied after the engine's migrations,
//! forward from a database an older release left, and refused when the database knows
//! more than the binary or a shipped migration was edited.

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{Arg, Migration, NewRun, Schema};
use waymark_engine::{Store, StoreError, TenantScope};

use crate::support::{Backend, TestDb};

/// The engine's last migration in the release before workflow schemas existed.
const PREVIOUS_RELEASE: i64 = 7;

const ORDERS: &str = "CREATE TABLE shop_orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)";
const NOTE: &str = "ALTER TABLE shop_orders ADD COLUMN note TEXT";

const SHOP_V1: Schema = Schema {
    name: "shop",
    postgres: &[Migration::new(1, "orders", ORDERS)],
    sqlite: &[Migration::new(1, "orders", ORDERS)],
};

const SHOP_V2: Schema = Schema {
    name: "shop",
    postgres: &[
        Migration::new(1, "orders", ORDERS),
        Migration::new(2, "order notes", NOTE),
    ],
    sqlite: &[
        Migration::new(1, "orders", ORDERS),
        Migration::new(2, "order notes", NOTE),
    ],
};

fn new_run() -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        tenant: "acme".into(),
        workflow: "shop_checkout".into(),
        workflow_version: 1,
        input: json!({"order": 1}),
        state: "a".into(),
        state_data: json!({"state": "a"}),
        capability: None,
        compensable: false,
        idempotency_key: None,
        tags: vec![],
        actor: "key:test".into(),
        now: chrono::Utc::now(),
    }
}

/// The schemas `waymark` itself ships (the workflows' and the API's), which every
/// process of an installation knows besides the ones a test adds.
fn shipped() -> Vec<Schema> {
    [waymark_workflows::schemas(), waymark_api::schemas()].concat()
}

async fn with(db: &TestDb, schemas: &[Schema]) -> Store {
    db.connect_unmigrated()
        .await
        .with_schemas(shipped().into_iter().chain(schemas.iter().copied()))
}

/// The migrations recorded for the schemas the test adds (the shipped ones left out).
async fn recorded(db: &TestDb) -> Vec<String> {
    let shipped: Vec<&str> = shipped().iter().map(|s| s.name).collect();
    db.texts(
        "SELECT schema_name || ':' || CAST(version AS TEXT) FROM waymark_schema_migrations \
         ORDER BY schema_name, version",
    )
    .await
    .into_iter()
    .filter(|r| !shipped.contains(&r.split(':').next().unwrap_or_default()))
    .collect()
}

fn schema_error(result: Result<(), StoreError>) -> String {
    match result {
        Err(StoreError::Schema(message)) => message,
        other => panic!("expected a schema error, got {other:?}"),
    }
}

async fn a_database_of_the_previous_release_migrates_forward(backend: Backend) {
    let db = TestDb::unmigrated(backend).await;
    db.store
        .migrate_engine_until(PREVIOUS_RELEASE)
        .await
        .expect("the previous release's schema");
    let run = db.store.run_start(new_run()).await.unwrap().run;

    // Today's binary: the engine's newer migrations, then every shipped schema.
    let shipped = db.connect_unmigrated().await.with_schemas(shipped());
    shipped.migrate().await.expect("migrates forward");
    assert!(shipped.ready().await.unwrap());

    // A workflow that arrives in a later release brings its schema, then a second migration.
    let v1 = with(&db, &[SHOP_V1]).await;
    assert!(
        !v1.ready().await.unwrap(),
        "not ready before its schema is applied"
    );
    v1.migrate().await.unwrap();
    assert!(v1.ready().await.unwrap());
    v1.sql_execute(
        "INSERT INTO shop_orders (id, total) VALUES ($1, $2)",
        &[Arg::text("o1"), Arg::int(4200)],
    )
    .await
    .unwrap();
    let v2 = with(&db, &[SHOP_V2]).await;
    v2.migrate().await.unwrap();
    v2.migrate().await.expect("migrating twice changes nothing");
    assert!(v2.ready().await.unwrap());
    assert_eq!(recorded(&db).await, ["shop:1", "shop:2"]);

    // Nothing was lost on the way.
    let kept = v2
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .expect("the run of the previous release");
    assert_eq!(kept.input, json!({"order": 1}));
    let rows = v2
        .sql_fetch(
            "SELECT total, note FROM shop_orders WHERE id = $1",
            &[Arg::text("o1")],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].int("total").unwrap(), 4200);
    assert_eq!(rows[0].opt_text("note").unwrap(), None);
}

async fn a_database_that_knows_more_than_the_binary_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    with(&db, &[SHOP_V2]).await.migrate().await.unwrap();

    // An older binary, which ships only the first migration of the schema.
    let older = with(&db, &[SHOP_V1]).await;
    let message = schema_error(older.migrate().await);
    assert!(message.contains("\"shop\" is at version 2"), "{message}");
    assert!(message.contains("upgrade Waymark"), "{message}");
    assert!(!older.ready().await.unwrap());

    // A binary that does not know the schema at all.
    let unaware = with(&db, &[]).await;
    let message = schema_error(unaware.migrate().await);
    assert!(message.contains("does not know"), "{message}");
    assert!(!unaware.ready().await.unwrap());

    // The database is as the newer binary left it.
    assert_eq!(recorded(&db).await, ["shop:1", "shop:2"]);
}

async fn an_applied_migration_edited_afterwards_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    with(&db, &[SHOP_V1]).await.migrate().await.unwrap();
    const EDITED: &str = "CREATE TABLE shop_orders (id TEXT PRIMARY KEY)";
    const EDITED_SCHEMA: Schema = Schema {
        name: "shop",
        postgres: &[Migration::new(1, "orders", EDITED)],
        sqlite: &[Migration::new(1, "orders", EDITED)],
    };
    let message = schema_error(with(&db, &[EDITED_SCHEMA]).await.migrate().await);
    assert!(
        message.contains("migration 1 of schema \"shop\" (orders) was changed"),
        "{message}"
    );
}

async fn a_malformed_schema_is_refused_before_anything_is_applied(backend: Backend) {
    let db = TestDb::new(backend).await;
    const GAP: Schema = Schema {
        name: "shop",
        postgres: &[Migration::new(2, "orders", ORDERS)],
        sqlite: &[Migration::new(2, "orders", ORDERS)],
    };
    const UNEVEN: Schema = Schema {
        name: "shop",
        postgres: &[Migration::new(1, "orders", ORDERS)],
        sqlite: &[],
    };
    const BAD_NAME: Schema = Schema {
        name: "Shop Orders",
        ..SHOP_V1
    };
    let cases: [(&[Schema], &str); 4] = [
        (&[GAP], "numbered 1, 2, 3"),
        (&[UNEVEN], "the same migration versions"),
        (&[BAD_NAME], "lowercase letters"),
        (&[SHOP_V1, SHOP_V1], "two schemas have this name"),
    ];
    for (schemas, expected) in cases {
        let message = schema_error(with(&db, schemas).await.migrate().await);
        assert!(message.contains(expected), "{expected:?} in {message:?}");
    }
    assert!(recorded(&db).await.is_empty());
}

async fn a_failing_migration_leaves_no_record_and_no_half_applied_change(backend: Backend) {
    let db = TestDb::new(backend).await;
    const BROKEN: &str = "CREATE TABLE shop_half (id TEXT); INSERT INTO no_such_table VALUES (1)";
    const BROKEN_SCHEMA: Schema = Schema {
        name: "shop",
        postgres: &[
            Migration::new(1, "orders", ORDERS),
            Migration::new(2, "broken", BROKEN),
        ],
        sqlite: &[
            Migration::new(1, "orders", ORDERS),
            Migration::new(2, "broken", BROKEN),
        ],
    };
    let store = with(&db, &[BROKEN_SCHEMA]).await;
    assert!(store.migrate().await.is_err());
    assert!(!store.ready().await.unwrap());
    // The first migration committed on its own; the second left nothing behind.
    assert_eq!(recorded(&db).await, ["shop:1"]);
    assert!(db.execute("SELECT * FROM shop_half").await.is_err());
    let store = with(&db, &[SHOP_V2]).await;
    store.migrate().await.expect("a fixed release migrates");
    assert_eq!(recorded(&db).await, ["shop:1", "shop:2"]);
}

macro_rules! schema_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Backend::Sqlite).await
                }
            )*
        }
    };
}

schema_tests!(
    a_database_of_the_previous_release_migrates_forward,
    a_database_that_knows_more_than_the_binary_is_refused,
    an_applied_migration_edited_afterwards_is_refused,
    a_malformed_schema_is_refused_before_anything_is_applied,
    a_failing_migration_leaves_no_record_and_no_half_applied_change,
);

/// Several processes migrating one PostgreSQL database at once take turns: each
/// migration is applied and recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_on_postgres_apply_each_schema_migration_once() {
    let db = TestDb::unmigrated(Backend::Postgres).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = with(&db, &[SHOP_V2]).await;
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    for task in tasks {
        task.await.unwrap().expect("every process migrates");
    }
    assert_eq!(recorded(&db).await, ["shop:1", "shop:2"]);
    assert!(db
        .store
        .clone()
        .with_schemas(shipped().into_iter().chain([SHOP_V2]))
        .ready()
        .await
        .unwrap());
}
