//! The OpenAPI 3.1 document, written from the route table.

use super::*;

/// The OpenAPI 3.1 document, written from [`table`].
pub fn openapi() -> Value {
    let mut paths: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    let problem = json!({"description": "A problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    for route in table() {
        let mut responses = serde_json::Map::new();
        for code in route.success {
            responses.insert(code.to_string(), json!({"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}}));
        }
        for code in [400, 401, 403, 404, 409, 413, 422, 429, 503] {
            responses.insert(code.to_string(), problem.clone());
        }
        let parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "summary": route.summary,
            "parameters": parameters,
            "responses": responses,
        });
        match route.auth {
            Auth::Key(scope) => {
                operation["security"] = json!([{"bearer": []}]);
                operation["x-waymark-scope"] = json!(scope);
            }
            Auth::WebhookSignature => {
                operation["security"] = json!([{"webhookSignature": []}]);
            }
        }
        if let Some(schema) = route.body {
            operation["requestBody"] = json!({"content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(route.path.to_owned())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    for (path, summary) in [
        ("/healthz", "The process is up."),
        (
            "/readyz",
            "The database answers and migrations are applied.",
        ),
        ("/openapi.json", "This document."),
        (
            "/metrics",
            "Prometheus metrics (a bearer token when WAYMARK_METRICS_TOKEN is set).",
        ),
    ] {
        paths.entry(path.to_owned()).or_default().insert(
            "get".into(),
            json!({"summary": summary, "security": [], "responses": {"200": {"description": "OK"}, "503": problem}}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Waymark", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "webhookSignature": {"type": "apiKey", "in": "header", "name": "Waymark-Signature",
                    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>; several v1= allowed; 5 minutes tolerance"}
            },
            "schemas": {"Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}}
        }
    })
}

pub async fn openapi_json() -> impl IntoResponse {
    Json(openapi())
}
