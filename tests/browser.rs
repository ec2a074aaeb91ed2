//! The dashboard end to end in a real browser, on both backends: a Waymark API on a
//! free port with the test workflows, keys and runs prepared here, and
//! `tests/browser/dashboard.mjs` driving Debian's chromium through playwright-core.
//! `./test.sh` installs both (scripts/ensure-browser.sh); without them these tests fail
//! saying so, never skip. Screenshots of every page go to
//! `tests/browser/artifacts/<backend>/` (git-ignored).

use std::path::Path;
use std::sync::atomic::Ordering;

use serde_json::json;
use waymark_engine::RunStatus;

use crate::dashboard::{id_of, start};
use crate::support::{on_both_backends, wait_for_run, wait_for_status, Backend, TestDb};

async fn the_dashboard_works_in_a_real_browser(db: TestDb) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    assert!(
        Path::new("/usr/bin/chromium").exists() && playwright.exists(),
        "the browser tests need /usr/bin/chromium and playwright-core in tests/browser/node_modules: \
         run them through ./test.sh, or scripts/ensure-browser.sh once"
    );
    let backend = match db.backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let (api, failing) = start(db).await;
    let (_, operator) = api.key("acme", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let (_, other) = api.key("beta", &["operator"]).await;
    // A run held after failing, and one whose compensation failed, for the actions.
    let held = id_of(&api.start_run(&operator, "ledger", json!({})).await);
    let stuck = id_of(&api.start_run(&operator, "booking", json!({})).await);
    wait_for_run(&api.db().store, held, "held", |r| r.held).await;
    wait_for_status(&api.db().store, stuck, RunStatus::CompensationFailed).await;
    // Retried from the page, it succeeds.
    failing.store(false, Ordering::SeqCst);

    let artifacts = root.join("tests/browser/artifacts").join(backend);
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .current_dir(root.join("tests/browser"))
        .env("WAYMARK_URL", &api.base)
        .env("ADMIN_KEY", &api.admin)
        .env("OPERATOR_KEY", &operator)
        .env("READER_KEY", &reader)
        .env("OTHER_KEY", &other)
        .env("HELD_RUN", held.to_string())
        .env("STUCK_RUN", stuck.to_string())
        .env("ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("ok: "), "{stdout}");
    println!("{backend}: {stdout} in {:?}", started.elapsed());
    for page in [
        "login",
        "overview",
        "runs",
        "run-waiting",
        "workflows",
        "audit",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "screenshot {page}"
        );
    }
    api.stop().await;
}

on_both_backends!(the_dashboard_works_in_a_real_browser);
