//! OGC API – Common for the processes: the landing page, the conformance declaration and the
//! OpenAPI 3.0 document of the API rooted at `/ogc` (whose `/ogc/processes` and `/ogc/jobs` are
//! the same resources as `/processes` and `/jobs`). Clients such as OWSLib start here.

use serde_json::{json, Value};
use zarrgate_core::ops::{Format, Process};

/// Where the API is rooted.
pub const ROOT: &str = "/ogc";

/// The media type OpenAPI 3.0 documents are announced with (OWSLib looks for exactly this).
pub const OPENAPI_TYPE: &str = "application/vnd.oai.openapi+json;version=3.0";

const CONFORMANCE: &[&str] = &[
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
];

/// The landing page; `base` is the gateway's absolute URL (links must be absolute for some
/// clients).
pub fn landing(base: &str) -> Value {
    let at = |path: &str| format!("{base}{ROOT}{path}");
    json!({
        "title": "zarrgate operations",
        "description": "Server-side subset and average of the datasets this gateway serves (OGC API - Processes 1.0).",
        "links": [
            {"href": at(""), "rel": "self", "type": "application/json", "title": "this document"},
            {"href": at("/api"), "rel": "service-desc", "type": OPENAPI_TYPE, "title": "the API definition"},
            {"href": format!("{base}/browse/"), "rel": "service-doc", "type": "text/html", "title": "the datasets, with forms that build operation URLs"},
            {"href": at("/conformance"), "rel": "conformance", "type": "application/json"},
            {"href": at("/conformance"), "rel": "http://www.opengis.net/def/rel/ogc/1.0/conformance", "type": "application/json"},
            {"href": at("/processes"), "rel": "http://www.opengis.net/def/rel/ogc/1.0/processes", "type": "application/json"},
            {"href": at("/jobs"), "rel": "http://www.opengis.net/def/rel/ogc/1.0/job-list", "type": "application/json"},
        ],
    })
}

pub fn conformance() -> Value {
    json!({"conformsTo": CONFORMANCE})
}

fn problem_response() -> Value {
    json!({"description": "An RFC 9457 problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/problem"}}}})
}

fn json_ok(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

/// The OpenAPI 3.0 document of the API.
pub fn openapi(base: &str) -> Value {
    let process_id = json!({"name": "processId", "in": "path", "required": true,
        "schema": {"type": "string", "enum": Process::ALL.iter().map(|p| p.id()).collect::<Vec<_>>()}});
    let job_id = json!({"name": "jobId", "in": "path", "required": true, "schema": {"type": "string"}});
    let errors = json!({"400": problem_response(), "401": problem_response(), "403": problem_response(),
        "404": problem_response(), "422": problem_response(), "429": problem_response(), "503": problem_response()});
    let with_errors = |mut ok: Value| {
        for (k, v) in errors.as_object().expect("an object") {
            ok[k] = v.clone();
        }
        ok
    };
    let result_types: serde_json::Map<String, Value> = Format::NAMES
        .iter()
        .filter_map(|n| Format::parse(n))
        .map(|f| (f.content_type().to_string(), json!({"schema": {"type": "string", "format": "binary"}})))
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "zarrgate operations", "version": "1.0.0",
                 "description": "OGC API - Processes 1.0 over the datasets a zarrgate gateway serves."},
        "servers": [{"url": format!("{base}{ROOT}")}],
        "paths": {
            "/": {"get": {"summary": "Landing page", "operationId": "getLandingPage",
                          "responses": with_errors(json!({"200": json_ok("The landing page")}))}},
            "/conformance": {"get": {"summary": "Conformance classes", "operationId": "getConformance",
                          "responses": with_errors(json!({"200": json_ok("The conformance declaration")}))}},
            "/api": {"get": {"summary": "This document", "operationId": "getAPI",
                          "responses": {"200": {"description": "The OpenAPI document",
                              "content": {OPENAPI_TYPE: {"schema": {"type": "object"}}}}}}},
            "/processes": {"get": {"summary": "The processes on offer", "operationId": "getProcesses",
                          "responses": with_errors(json!({"200": json_ok("The process list")}))}},
            "/processes/{processId}": {"get": {"summary": "A process's description", "operationId": "getProcessDescription",
                          "parameters": [process_id.clone()],
                          "responses": with_errors(json!({"200": json_ok("The process description")}))}},
            "/processes/{processId}/execution": {"post": {"summary": "Execute a process", "operationId": "execute",
                          "parameters": [process_id, {"name": "Prefer", "in": "header", "required": false,
                              "schema": {"type": "string"}, "description": "respond-async asks for a job"}],
                          "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/execute"}}}},
                          "responses": with_errors(json!({
                              "200": {"description": "The result (raw), or a results document (response = document)",
                                      "content": Value::Object(result_types.clone())},
                              "201": json_ok("A job was created (asynchronous execution)")}))}},
            "/jobs": {"get": {"summary": "The caller's jobs", "operationId": "getJobs",
                          "responses": with_errors(json!({"200": json_ok("The job list")}))}},
            "/jobs/{jobId}": {
                "get": {"summary": "A job's status", "operationId": "getStatus", "parameters": [job_id.clone()],
                        "responses": with_errors(json!({"200": json_ok("The status")}))},
                "delete": {"summary": "Dismiss a job", "operationId": "dismiss", "parameters": [job_id.clone()],
                        "responses": with_errors(json!({"200": json_ok("The status of the dismissed job")}))}},
            "/jobs/{jobId}/results": {"get": {"summary": "A job's result", "operationId": "getResult",
                          "parameters": [job_id],
                          "responses": with_errors(json!({"200": {"description": "The result", "content": Value::Object(result_types)}}))}},
        },
        "components": {"schemas": {
            "execute": {"type": "object", "properties": {
                "inputs": {"type": "object", "additionalProperties": true},
                "outputs": {"type": "object", "additionalProperties": true},
                "response": {"type": "string", "enum": ["raw", "document"], "default": "raw"}}},
            "problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}}},
        }},
    })
}
