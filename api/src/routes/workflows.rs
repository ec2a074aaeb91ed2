//! Workflow types: their state machines, who may start them, diagrams.

use super::*;

/// The registered workflow types and their diagrams.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/workflows/{workflow}/runs",
            summary: "Start a run; the body is the workflow's input. `Idempotency-Key` makes \
                      it idempotent; `?tag=` labels it; an admin acting for a tenant passes \
                      `?tenant=`.",
            auth: Auth::Key(Scope::Operator),
            success: &[200, 201],
            body: Some(json!({"type": "object"})),
            handler: post(start_run),
        },
        Route {
            method: Method::GET,
            path: "/v1/workflows",
            summary: "Registered workflow types with their state machines.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(list_workflows),
        },
        Route {
            method: Method::GET,
            path: "/v1/workflows/{workflow}",
            summary: "One workflow type: states, edges, signals, timers, compensations.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(get_workflow),
        },
        Route {
            method: Method::GET,
            path: "/v1/workflows/{workflow}/diagram.svg",
            summary: "The workflow's state machine as an SVG picture.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(workflow_diagram),
        },
    ]
}

pub(super) fn describe(workflow: &dyn waymark_engine::workflow::ErasedWorkflow) -> Value {
    let definition = workflow.definition();
    let mut started_by = vec!["waymark"];
    if definition.startable_by(false) {
        started_by.push("operator");
    }
    if definition.startable_by(true) {
        started_by.push("admin");
    }
    json!({
        "name": workflow.name(),
        "version": workflow.version(),
        "access": definition.access,
        "started_by": started_by,
        "definition": definition,
    })
}

/// A workflow the caller may see: a system workflow (one that acts across tenants) is
/// Waymark's own business, and to a tenant's key it does not exist.
pub(super) fn visible<'a>(
    state: &'a AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<&'a Arc<dyn ErasedWorkflow>> {
    state
        .engine
        .registry
        .get(name)
        .filter(|w| caller.is_admin() || w.definition().access != Access::System)
        .ok_or_else(|| ApiError::not_found(format!("workflow {name:?} not found")))
}

/// A workflow the caller may start through the generic route: tenants' keys only
/// tenant workflows (the others answer 404, like a workflow that does not exist);
/// admins also those that allow it. Waymark's own workflows are started by their own
/// routes, which check what this one cannot (a slug reservation, a key's scope).
pub(super) fn startable<'a>(
    state: &'a AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<&'a Arc<dyn ErasedWorkflow>> {
    let workflow = state
        .engine
        .registry
        .get(name)
        .filter(|w| caller.is_admin() || w.definition().startable_by(false))
        .ok_or_else(|| ApiError::not_found(format!("workflow {name:?} not found")))?;
    if !workflow.definition().startable_by(caller.is_admin()) {
        return Err(ApiError::forbidden(format!(
            "workflow {name:?} is started only by Waymark itself (through its own route or schedule)"
        )));
    }
    Ok(workflow)
}

pub(super) async fn list_workflows(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let workflows: Vec<Value> = state
        .engine
        .registry
        .iter()
        .filter(|w| caller.is_admin() || w.definition().access != Access::System)
        .map(|w| describe(w.as_ref()))
        .collect();
    Ok(Json(json!({ "workflows": workflows })))
}

pub(super) async fn get_workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let workflow = visible(&state, &caller, &name)?;
    Ok(Json(describe(workflow.as_ref())))
}

pub(super) async fn workflow_diagram(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let workflow = visible(&state, &caller, &name)?;
    let svg = crate::diagram::svg(workflow.name(), workflow.definition());
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}
