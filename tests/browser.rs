//! The dashboard end to end in a real browser, on both backends:
//! `tests/browser/dashboard.mjs` against a Waymark API on a free port with the test
//! workflows (a held run and a failed compensation need workflows the binary does not
//! ship), keys and runs prepared here; and `tests/browser/serve.mjs` against a real
//! `waymark serve` with its built-in workflows. Both drive Debian's chromium through
//! playwright-core. `./test.sh` installs both (scripts/ensure-browser.sh); without them
//! these tests fail saying so, never skip. Screenshots of every page go to
//! `tests/browser/artifacts/<backend>/` (git-ignored).

use std::path::Path;
use std::sync::atomic::Ordering;

use serde_json::json;
use waymark_engine::RunStatus;

use crate::binary::{command, spawn_with};
use crate::dashboard::{id_of, start};
use crate::support::{on_both_backends, wait_for_run, wait_for_status, Backend, TestDb};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    }
}

/// Runs `script` with node and `env`; fails the test with its output unless it passes.
async fn run_script(script: &str, env: &[(&str, String)]) {
    let playwright = root().join("tests/browser/node_modules/playwright-core");
    assert!(
        Path::new("/usr/bin/chromium").exists() && playwright.exists(),
        "the browser tests need /usr/bin/chromium and playwright-core in tests/browser/node_modules: \
         run them through ./test.sh, or scripts/ensure-browser.sh once"
    );
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .current_dir(root().join("tests/browser"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("ok: "), "{stdout}");
    println!("{script}: {} in {:?}", stdout.trim(), started.elapsed());
}

async fn the_dashboard_works_in_a_real_browser(db: TestDb) {
    let backend = backend_name(db.backend);
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

    let artifacts = root().join("tests/browser/artifacts").join(backend);
    run_script(
        "dashboard.mjs",
        &[
            ("WAYMARK_URL", api.base.clone()),
            ("ADMIN_KEY", api.admin.clone()),
            ("OPERATOR_KEY", operator),
            ("READER_KEY", reader),
            ("OTHER_KEY", other),
            ("HELD_RUN", held.to_string()),
            ("STUCK_RUN", stuck.to_string()),
            ("ARTIFACTS", artifacts.display().to_string()),
        ],
    )
    .await;
    for page in [
        "login",
        "overview",
        "runs",
        "run-waiting",
        "run-completed",
        "run-as-reader",
        "workflows",
        "workers",
        "audit",
        "admin-keys",
        "admin-schedules",
        "admin-dead-letters",
        "admin-tenants",
        "phone-runs",
        "phone-run",
        "phone-keys",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "screenshot {page}"
        );
    }
    api.stop().await;
}

async fn the_dashboard_of_waymark_serve_works_in_a_real_browser(db: TestDb) {
    let backend = backend_name(db.backend);
    let proc = spawn_with(command(&db, &["serve"])).await;
    let admin = proc
        .printed
        .iter()
        .find(|line| line.starts_with("waymark: created the admin key"))
        .and_then(|line| line.rsplit(": ").next())
        .expect("serve printed its bootstrap admin key")
        .trim()
        .to_owned();
    let artifacts = root().join("tests/browser/artifacts").join(backend);
    run_script(
        "serve.mjs",
        &[
            (
                "WAYMARK_URL",
                format!("http://{}", proc.addr.clone().unwrap()),
            ),
            ("ADMIN_KEY", admin),
            ("ARTIFACTS", artifacts.display().to_string()),
        ],
    )
    .await;
    assert!(artifacts.join("serve-run-sleeping.png").exists());
}

on_both_backends!(
    the_dashboard_works_in_a_real_browser,
    the_dashboard_of_waymark_serve_works_in_a_real_browser,
);
