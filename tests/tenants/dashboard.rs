//! The dashboard's tenants page, on both backends: an admin sees each tenant's status,
//! plan and quotas, its resources with the run that made each, and its provisioning
//! run; nobody else sees the page or its entry in the navigation.

use reqwest::StatusCode;
use waymark_engine::RunStatus;

use super::{unique_email, Install};
use crate::dashboard::Browser;
use crate::support::{on_both_backends, TestDb};

async fn the_tenants_page_shows_status_quotas_resources_and_runs_to_admins_only(db: TestDb) {
    let app = Install::start(db).await;
    let (run, key, secret) = app.active_tenant("acme-eu", &unique_email("admin")).await;
    app.wait_run(run, RunStatus::Completed).await;

    let mut admin = Browser::login(&app, &app.admin).await;
    let page = admin.get("/ui/tenants").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page
        .body
        .contains(r#"href="/ui/tenants" aria-current="page""#));
    let at = page
        .body
        .find(r#"id="tenant-acme-eu""#)
        .expect("the tenant's section");
    let section = &page.body[at..];
    assert!(
        section.contains(r#"<dd class="tenant-status">active"#),
        "{section}"
    );
    assert!(section.contains("<dd>pro</dd>"), "{section}");
    assert!(
        section.contains(&format!("storage {} bytes", 100u64 << 30)),
        "{section}"
    );
    // The provisioning run, and every resource naming it as its maker.
    let link = format!(r#"href="/ui/runs/{run}""#);
    assert!(section.contains(&link));
    assert!(
        section.contains("api_key") && section.contains(&key.to_string()),
        "{section}"
    );
    let rows = section.matches("<tr><td>").count();
    assert!(rows >= 2, "resources listed: {section}");
    assert_eq!(
        section.matches(&link).count(),
        rows + 1,
        "each resource links its run"
    );
    // The provisioning run's page opens from there.
    assert_eq!(
        admin.get(&format!("/ui/runs/{run}")).await.status,
        StatusCode::OK
    );
    // A bad cursor is ignored, not an error.
    assert_eq!(
        admin.get("/ui/tenants?after=%3Cx%3E").await.status,
        StatusCode::OK
    );

    // The tenant's own key, and an operator: no entry, and the page refused.
    for secret in [secret.clone(), app.key("acme-eu", &["operator"]).await.1] {
        let mut browser = Browser::login(&app, &secret).await;
        let home = browser.get("/ui/").await;
        assert!(!home.body.contains(r#"href="/ui/tenants""#));
        let page = browser.get("/ui/tenants").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert!(!page.body.contains("acme-eu Ltd"));
    }
    app.stop().await;
}

on_both_backends!(the_tenants_page_shows_status_quotas_resources_and_runs_to_admins_only);
