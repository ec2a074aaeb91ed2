//! Tenants (admin): each tenant's status, plan and quotas, the resources it holds with
//! the run that made each, and its provisioning and deprovisioning runs. It reads the
//! same records `GET /v1/tenants` reads; like the issue asks, the page is an admin's
//! (operators see their own tenant through the API).

use axum::extract::State;
use axum::response::Response;
use maud::html;
use waymark_workflows::tenants::record;

use super::page::{self, layout};
use super::session::UiSession;
use crate::AppState;

/// Tenants shown on one page; an installation with more pages through `?after=`.
const PAGE: u32 = 100;

pub(super) async fn list(
    State(state): State<AppState>,
    session: UiSession,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    if !session.caller.is_admin() {
        return page::forbidden("the tenants page is an admin's");
    }
    let query = super::query(raw);
    let after =
        crate::routes::param(&query, "after").filter(|a| waymark_engine::is_valid_tenant(a));
    let store = &state.engine.store;
    let fail = |e: sqlx::Error| {
        let e = crate::error::ApiError::from(waymark_engine::StoreError::Database(e));
        page::message(&session, e.status, "Something went wrong", &e.detail)
    };
    let tenants = match record::list_page(store, None, after, PAGE + 1).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let more = tenants.len() > PAGE as usize;
    let tenants = &tenants[..tenants.len().min(PAGE as usize)];
    let mut resources = Vec::with_capacity(tenants.len());
    for t in tenants {
        match record::resources(store, &t.slug).await {
            Ok(r) => resources.push(r),
            Err(e) => return fail(e),
        }
    }
    let run_link = |run: uuid::Uuid| html! { a href={ "/ui/runs/" (run) } { code { (run.to_string()[..13]) } } };
    let body = html! {
        h1 { "Tenants" }
        @if tenants.is_empty() { p { "No tenants." } }
        @for (t, held) in tenants.iter().zip(&resources) {
            section.tenant id={ "tenant-" (t.slug) } {
                h2 { (t.name) " " small { code { (t.slug) } } }
                dl {
                    dt { "Status" } dd.tenant-status { (t.status.as_str())
                        @if let Some(reason) = &t.reason { " — " (reason) } }
                    dt { "Plan" } dd { (t.plan) }
                    dt { "Quotas" } dd { "storage " (t.quota.storage_bytes) " bytes; runs "
                        @match t.quota.runs { Some(n) => { (n) } None => { "unlimited" } } }
                    dt { "Admin email" } dd { (t.admin_email) }
                    dt { "Provisioning run" } dd { @match t.run_id { Some(r) => { (run_link(r)) } None => { "—" } } }
                    dt { "Deprovisioning run" } dd { @match t.deprovision_run_id { Some(r) => { (run_link(r)) } None => { "—" } } }
                    dt { "Created" } dd { (page::time(t.created_at)) }
                    dt { "Runs" } dd { a href={ "/ui/runs?tenant=" (t.slug) } { "This tenant's runs →" } }
                }
                h3 { "Resources" }
                @if held.is_empty() { p { "None." } } @else {
                    div.scroll tabindex="0" { table.resources { thead { tr { th { "Kind" } th { "Name" } th { "Made by run" } th { "Since" } } }
                        tbody { @for r in held { tr {
                            td { (r.kind.as_str()) } td { code { (r.name) } } td { (run_link(r.run_id)) } td { (page::time(r.created_at)) }
                        } } } } }
                }
            }
        }
        @if more { @if let Some(last) = tenants.last() { p { a rel="next" href={ "/ui/tenants?after=" (last.slug) } { "More →" } } } }
    };
    layout(Some(&session), "Tenants", "/ui/tenants", body)
}
