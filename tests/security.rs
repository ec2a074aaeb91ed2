//! What a tenant's key can and cannot reach, through real HTTP on both backends: the
//! workflows that act across tenants (retention, tenant provisioning and
//! deprovisioning) and the ones only Waymark starts (key rotation) are out of reach of
//! the generic start route, schedules and fan-outs, and a step sees its own tenant only
//! unless its workflow is declared a system workflow.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use waymark_engine::{RunStatus, StartRun};

use crate::support::app::{problem_type, Services, TestApp};
use crate::support::{on_both_backends, wait_for_status, TestDb};

on_both_backends!(
    a_tenants_operator_cannot_start_or_schedule_waymarks_own_workflows,
    an_admin_starts_only_the_system_workflows_that_allow_it,
    a_rotation_policy_schedule_cannot_be_pointed_at_another_key,
    a_step_reaches_only_its_own_tenant_unless_its_workflow_is_a_system_one,
    extreme_durations_are_refused_naming_the_field_and_the_maximum,
    every_documented_route_refuses_a_key_one_scope_below_its_own,
);

/// Every shipped workflow registered, with an outbox mailer and local blobs: the
/// attacks below must be stopped before any of them runs a step.
async fn api_with_shipped_workflows(db: TestDb) -> TestApp {
    TestApp::on(db)
        .with_services(Services::local())
        .spawn()
        .await
}

const SYSTEM_WORKFLOWS: [&str; 4] = [
    "waymark.retention",
    "tenant_provisioning",
    "tenant_deprovisioning",
    "key_rotation",
];

/// How many runs of `workflow` exist in any tenant.
async fn runs_of(api: &TestApp, workflow: &str) -> usize {
    let (status, body) = api
        .get(
            &format!("/v1/runs?workflow={workflow}&limit=100"),
            &api.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["runs"].as_array().unwrap().len()
}

async fn whoami(api: &TestApp, key: &str) -> StatusCode {
    api.get("/v1/whoami", key).await.0
}

async fn a_tenants_operator_cannot_start_or_schedule_waymarks_own_workflows(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let (_, attacker) = api.key("alpha", &["operator"]).await;
    let (victim_key_id, victim) = api.key("victim", &["operator"]).await;
    // An admin key filed under the attacker's own tenant: `DELETE /v1/keys/{id}`
    // refuses to let the operator revoke it, so no rotation may do it either.
    let (own_admin_id, own_admin) = api.key("alpha", &["admin"]).await;
    let victims_run = api.start_run(&victim, "three_step", json!({"n": 1})).await;
    let victims_run = victims_run["id"].as_str().unwrap().to_owned();
    wait_for_status(
        &api.engine.store,
        victims_run.parse().unwrap(),
        RunStatus::Completed,
    )
    .await;

    let attacks = [
        ("waymark.retention", json!({"older_than": "0s"})),
        ("tenant_deprovisioning", json!({"slug": "victim"})),
        (
            "tenant_provisioning",
            json!({"slug": "squatted", "name": "Squat", "plan": "enterprise", "admin_email": "a@example.test"}),
        ),
        (
            "key_rotation",
            json!({"key_id": victim_key_id, "grace_period": "1s", "emergency": true}),
        ),
        (
            "key_rotation",
            json!({"key_id": own_admin_id, "grace_period": "1s", "emergency": true}),
        ),
    ];
    for (workflow, input) in &attacks {
        let path = format!("/v1/workflows/{workflow}/runs");
        let (status, body) = api.post(&path, &attacker, input.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{workflow} {input}: {body}");
        assert_eq!(problem_type(&body), "not-found", "{body}");
        // Nor through a schedule, which answers as for a workflow that does not exist.
        let schedule = json!({"name": format!("sneak {workflow}"), "cron": "* * * * *", "workflow": workflow, "input": input});
        let (status, body) = api.post("/v1/schedules", &attacker, schedule).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{workflow}: {body}"
        );
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("is not a registered workflow"),
            "{body}"
        );
    }
    // A tenant's key does not even see the system workflows; key rotation (its own
    // tenant's business) it sees, as started by Waymark only.
    let (_, list) = api.get("/v1/workflows", &attacker).await;
    let listed: Vec<&Value> = list["workflows"].as_array().unwrap().iter().collect();
    let names: Vec<&str> = listed.iter().map(|w| w["name"].as_str().unwrap()).collect();
    for hidden in [
        "waymark.retention",
        "tenant_provisioning",
        "tenant_deprovisioning",
    ] {
        assert!(!names.contains(&hidden), "{names:?}");
        for path in [
            format!("/v1/workflows/{hidden}"),
            format!("/v1/workflows/{hidden}/diagram.svg"),
        ] {
            let (status, _) = api.get(&path, &attacker).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let rotation = listed.iter().find(|w| w["name"] == "key_rotation").unwrap();
    assert_eq!(rotation["access"], "internal");
    assert_eq!(rotation["started_by"], json!(["waymark"]));
    let demo = listed.iter().find(|w| w["name"] == "three_step").unwrap();
    assert_eq!(demo["started_by"], json!(["waymark", "operator", "admin"]));

    // Nothing changed: no run of any of them, the victim's run and keys as they were.
    for workflow in SYSTEM_WORKFLOWS {
        assert_eq!(runs_of(&api, workflow).await, 0, "{workflow}");
    }
    let (status, schedules) = api.get("/v1/schedules", &attacker).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(schedules["schedules"], json!([]));
    let (status, run) = api.get(&format!("/v1/runs/{victims_run}"), &victim).await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    assert_eq!(whoami(&api, &victim).await, StatusCode::OK);
    assert_eq!(whoami(&api, &own_admin).await, StatusCode::OK);
    api.stop().await;
}

async fn an_admin_starts_only_the_system_workflows_that_allow_it(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let admin = api.admin.clone();
    let (key_id, _) = api.key("alpha", &["operator"]).await;
    for (workflow, input) in [
        ("tenant_deprovisioning", json!({"slug": "alpha"})),
        (
            "key_rotation",
            json!({"key_id": key_id, "grace_period": "1s", "emergency": true}),
        ),
    ] {
        let path = format!("/v1/workflows/{workflow}/runs?tenant=alpha");
        let (status, body) = api.post(&path, &admin, input.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{workflow}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("started only by Waymark"),
            "{body}"
        );
        let schedule =
            json!({"name": "by hand", "cron": "* * * * *", "workflow": workflow, "input": input});
        let (status, body) = api.post("/v1/schedules", &admin, schedule).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("started only by Waymark"),
            "{body}"
        );
        assert_eq!(runs_of(&api, workflow).await, 0);
    }
    // Retention allows an admin, in the system tenant only.
    let (_, list) = api.get("/v1/workflows", &admin).await;
    let retention = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "waymark.retention")
        .unwrap()
        .clone();
    assert_eq!(retention["access"], "system");
    assert_eq!(retention["started_by"], json!(["waymark", "admin"]));
    let (status, body) = api
        .post(
            "/v1/workflows/waymark.retention/runs?tenant=alpha",
            &admin,
            json!({"older_than": "1000d"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("runs only in the \"system\" tenant"),
        "{body}"
    );
    let run = api
        .start_run(&admin, "waymark.retention", json!({"older_than": "1000d"}))
        .await;
    assert_eq!(run["tenant"], "system");
    wait_for_status(
        &api.engine.store,
        run["id"].as_str().unwrap().parse().unwrap(),
        RunStatus::Completed,
    )
    .await;
    api.stop().await;
}

async fn a_rotation_policy_schedule_cannot_be_pointed_at_another_key(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let (own_id, operator) = api.key("alpha", &["operator"]).await;
    let (admin_id, _) = api.key("alpha", &["admin"]).await;
    // The policy routes apply the same wider-scope rule as revoking.
    for method in [Method::PUT, Method::DELETE] {
        let (status, body) = api
            .call(
                method.clone(),
                &format!("/v1/keys/{admin_id}/rotation-policy"),
                Some(&operator),
                Some(json!({"cron": "0 0 1 1 *"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}: {body}");
    }
    let (status, policy) = api
        .call(
            Method::PUT,
            &format!("/v1/keys/{own_id}/rotation-policy"),
            Some(&operator),
            Some(json!({"cron": "0 0 1 1 *"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let path = format!("/v1/schedules/{}", policy["id"].as_str().unwrap());
    let mut forged = policy["input"].clone();
    forged["key_id"] = json!(admin_id);
    for patch in [
        json!({"input": forged}),
        json!({"workflow": "three_step", "input": {"n": 1}}),
    ] {
        let (status, body) = api
            .call(Method::PATCH, &path, Some(&operator), Some(patch.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{patch}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("Waymark manages"),
            "{body}"
        );
    }
    // Pausing it stays the tenant's call.
    let (status, body) = api
        .call(
            Method::PATCH,
            &path,
            Some(&operator),
            Some(json!({"paused": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, after) = api.get(&path, &operator).await;
    assert_eq!(after["input"]["key_id"], json!(own_id));
    assert_eq!(after["workflow"], "key_rotation");
    api.stop().await;
}

async fn a_step_reaches_only_its_own_tenant_unless_its_workflow_is_a_system_one(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let (_, attacker) = api.key("alpha", &["operator"]).await;
    let (victim_id, victim) = api.key("victim", &["operator"]).await;
    // A rotation run in alpha naming victim's key: what a forged input or a bug in a
    // start path would produce. The engine gives its steps alpha's data only.
    let started = api
        .engine
        .start(StartRun {
            tenant: "alpha".into(),
            workflow: "key_rotation".into(),
            input: json!({"key_id": victim_id, "grace_period": "1s", "emergency": true}),
            idempotency_key: None,
            tags: Vec::new(),
            actor: "test".into(),
        })
        .await
        .unwrap();
    let failed = wait_for_status(&api.engine.store, started.run.id, RunStatus::Failed).await;
    assert!(
        failed
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("does not exist"),
        "{:?}",
        failed.error
    );
    assert_eq!(whoami(&api, &victim).await, StatusCode::OK);
    // Its view shows no key of another tenant either.
    let (status, view) = api
        .get(&format!("/v1/runs/{}", started.run.id), &attacker)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["details"], json!({}), "{view}");
    // A system workflow outside the system tenant is refused by the engine itself.
    let error = api
        .engine
        .start(StartRun {
            tenant: "alpha".into(),
            workflow: "waymark.retention".into(),
            input: json!({"older_than": "0s"}),
            idempotency_key: None,
            tags: Vec::new(),
            actor: "test".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, waymark_engine::EngineError::SystemTenantOnly { .. }),
        "{error}"
    );
    api.stop().await;
}

/// Every duration a caller can send, at and past the edges: a clear 422 naming the
/// field (and the maximum, where that is what is wrong), nothing started or changed,
/// and the largest allowed value works.
async fn extreme_durations_are_refused_naming_the_field_and_the_maximum(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let (key_id, operator) = api.key("alpha", &["operator"]).await;
    let too_long = [
        ("1000000y", "at most 36500d"),
        ("36501d", "at most 36500d"),
        ("99999999999999999999y", "invalid duration"),
        ("-1s", "invalid duration"),
        ("soon", "invalid duration"),
    ];
    for (value, why) in too_long {
        let cases = [
            (
                Method::POST,
                "/v1/workflows/demo/runs".to_owned(),
                operator.clone(),
                json!({"name": "Ada", "wait": value}),
                "wait",
            ),
            (
                Method::POST,
                "/v1/workflows/demo/runs".to_owned(),
                operator.clone(),
                json!({"name": "Ada", "work": value}),
                "work",
            ),
            (
                Method::POST,
                "/v1/workflows/waymark.retention/runs".to_owned(),
                api.admin.clone(),
                json!({"older_than": value}),
                "older_than",
            ),
            (
                Method::POST,
                format!("/v1/keys/{key_id}/rotate"),
                operator.clone(),
                json!({"grace_period": value}),
                "grace_period",
            ),
            (
                Method::PUT,
                format!("/v1/keys/{key_id}/rotation-policy"),
                operator.clone(),
                json!({"cron": "0 0 1 1 *", "grace_period": value}),
                "grace_period",
            ),
        ];
        for (method, path, key, body, field) in cases {
            let (status, answer) = api
                .call(method.clone(), &path, Some(&key), Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {path} {body}: {answer}"
            );
            let detail = answer["detail"].as_str().unwrap();
            let rotation_why = if why == "at most 36500d" {
                why
            } else {
                "grace_period"
            };
            let expected = if field == "grace_period" {
                rotation_why
            } else {
                why
            };
            assert!(
                detail.contains(field) && detail.contains(expected),
                "{method} {path} {body}: {detail}"
            );
        }
    }
    for workflow in ["demo", "waymark.retention", "key_rotation"] {
        assert_eq!(runs_of(&api, workflow).await, 0, "{workflow}");
    }
    let (_, schedules) = api.get("/v1/schedules", &operator).await;
    assert_eq!(schedules["schedules"], json!([]));
    // The maximum itself is fine, and the run it makes waits 100 years.
    let run = api
        .start_run(&operator, "demo", json!({"name": "Ada", "wait": "36500d"}))
        .await;
    let sleeping = crate::support::wait_for_run(
        &api.engine.store,
        run["id"].as_str().unwrap().parse().unwrap(),
        "sleeping",
        |r| r.status == RunStatus::Sleeping,
    )
    .await;
    assert!(sleeping.due_at.unwrap() > chrono::Utc::now() + chrono::Duration::days(36_000));
    let (status, body) = api
        .post(
            &format!("/v1/keys/{key_id}/rotate"),
            &operator,
            json!({"grace_period": "36500d"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.stop().await;
}

/// Walks the served OpenAPI document (what is documented) and calls every operation
/// with a key one scope below the one it names (`x-waymark-scope`), or with no key for
/// reader routes: each answers 403 (401) before looking at its input. The router
/// applies the table's scope itself, so this holds even for a handler that forgot.
async fn every_documented_route_refuses_a_key_one_scope_below_its_own(db: TestDb) {
    let api = api_with_shipped_workflows(db).await;
    let (_, reader) = api.key("alpha", &["reader"]).await;
    let (_, operator) = api.key("alpha", &["operator"]).await;
    let (status, document) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut probed = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let Some(scope) = operation["x-waymark-scope"].as_str() else {
                continue;
            };
            let (key, expected) = match scope {
                "reader" => (None, StatusCode::UNAUTHORIZED),
                "operator" => (Some(reader.as_str()), StatusCode::FORBIDDEN),
                "admin" => (Some(operator.as_str()), StatusCode::FORBIDDEN),
                other => panic!("{method} {path}: unknown scope {other}"),
            };
            // Path parameters filled with something that names nothing: the scope is
            // checked before anything is looked up.
            let concrete = path
                .split('/')
                .map(|part| {
                    if part.starts_with('{') {
                        uuid::Uuid::now_v7().to_string()
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let method: Method = method.to_uppercase().parse().unwrap();
            let body =
                matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let (status, answer) = api.call(method.clone(), &concrete, key, body).await;
            assert_eq!(
                status, expected,
                "{method} {path} ({scope}) with a key one scope below: {answer}"
            );
            probed += 1;
        }
    }
    assert!(probed >= 30, "only {probed} operations documented");
    api.stop().await;
}
