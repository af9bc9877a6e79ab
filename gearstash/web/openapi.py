"""``GET /api/openapi.json``: the OpenAPI 3.1 description of the JSON API (written by hand, kept
next to the routes it describes; a test checks every API route is in it)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gearstash import __version__

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_REF_PARAM = {
    "name": "ref",
    "in": "path",
    "required": True,
    "description": "A job reference HANDLE[@SERVER][#UNIQUE] (URL-encoded) or a bare handle.",
    "schema": {"type": "string"},
}
_TOKEN_PARAM = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "A job token (gearstash token sign, or the share action).",
    "schema": {"type": "string"},
}
_FILTERS = [
    {"name": "state", "in": "query", "schema": {"type": "string"},
     "description": "queued, running, complete, failed, expired (repeat or comma-separate)"},
    {"name": "function", "in": "query", "schema": {"type": "string"}},
    {"name": "server", "in": "query", "schema": {"type": "string"}, "description": "host:port"},
    {"name": "since", "in": "query", "schema": {"type": "number"},
     "description": "updated at or after (Unix seconds)"},
    {"name": "until", "in": "query", "schema": {"type": "number"},
     "description": "updated before (Unix seconds)"},
    {"name": "q", "in": "query", "schema": {"type": "string"},
     "description": "handle or unique prefix"},
]  # fmt: skip
_EVENTS = {
    "description": "text/event-stream: state, restart, status, chunk, warning, final (see the "
    "README); each id is a cursor for Last-Event-ID",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_FORM_CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": False,
    "description": "the session's CSRF token (or the form field csrf)",
    "schema": {"type": "string"},
}

SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "gearstash web", "version": __version__},
    "paths": {
        "/api/jobs": {
            "get": {
                "summary": "Stored jobs, newest first, filtered and paged",
                "parameters": [
                    *_FILTERS,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                "maximum": 200}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "counts", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {"200": _json("a page", _ref("JobPage")), "400": _ERROR,
                              "403": _ERROR, "501": _ERROR},
            }
        },
        "/api/counts": {
            "get": {"summary": "Counts by state", "parameters": _FILTERS,
                    "responses": {"200": _json("counts", _ref("Counts")), "400": _ERROR}}
        },
        "/api/throughput": {
            "get": {"summary": "Jobs finished and failed per minute, last hour",
                    "responses": {"200": _json("series", {"type": "object"})}}
        },
        "/api/jobs/{ref}": {
            "get": {"summary": "One job's merged view (gearstash fetch --json)",
                    "parameters": [_REF_PARAM],
                    "responses": {"200": _json("the job", _ref("Job")), "400": _ERROR,
                                  "404": _ERROR}}
        },
        "/api/jobs/{ref}/events": {
            "get": {"summary": "Server-Sent Events of one job, resumable",
                    "parameters": [_REF_PARAM, {"name": "Last-Event-ID", "in": "header",
                                                "schema": {"type": "string"}}],
                    "responses": {"200": _EVENTS, "400": _ERROR}}
        },
        "/api/jobs/{ref}/forget": {
            "post": {"summary": "Forget a job (admin)", "parameters": [_REF_PARAM, _FORM_CSRF],
                     "responses": {"200": _json("count", {"type": "object"}), "403": _ERROR}}
        },
        "/api/jobs/{ref}/resubmit": {
            "post": {"summary": "Submit a failed or lost job again with its captured workload "
                                "(admin); answers the new job's ref and page path",
                     "parameters": [_REF_PARAM, _FORM_CSRF],
                     "responses": {"201": _json("reference", {"type": "object"}),
                                   "403": _ERROR, "404": _ERROR, "409": _ERROR,
                                   "502": _ERROR, "503": _ERROR}}
        },
        "/api/jobs/{ref}/share": {
            "post": {"summary": "Mint a token link to the job's public page",
                     "parameters": [_REF_PARAM, _FORM_CSRF],
                     "responses": {"200": _json("token", {"type": "object"}), "403": _ERROR,
                                   "404": _ERROR}}
        },
        "/api/purge": {
            "post": {"summary": "Remove expired records now (admin)", "parameters": [_FORM_CSRF],
                     "responses": {"200": _json("count", {"type": "object"}), "403": _ERROR}}
        },
        "/api/submit": {
            "post": {"summary": "Submit a background job (admin; off unless enabled)",
                     "parameters": [_FORM_CSRF],
                     "responses": {"201": _json("reference", {"type": "object"}),
                                   "400": _ERROR, "403": _ERROR, "413": _ERROR, "502": _ERROR,
                                   "503": _ERROR}}
        },
        "/api/servers": {
            "get": {"summary": "Configured job servers: functions, workers, reachable",
                    "responses": {"200": _json("servers", {"type": "object"})}}
        },
        "/api/store": {
            "get": {"summary": "The store's redacted URL and capabilities",
                    "responses": {"200": _json("store", {"type": "object"})}}
        },
        "/t/{token}": {
            "get": {"summary": "The job a token names, without ref, handle, server, unique, "
                                "worker and workload", "parameters": [_TOKEN_PARAM],
                    "responses": {"200": _json("the job", _ref("Job")), "403": _ERROR}}
        },
        "/t/{token}/events": {
            "get": {"summary": "Events of the job a token names", "parameters": [_TOKEN_PARAM],
                    "responses": {"200": _EVENTS, "403": _ERROR}}
        },
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "JobSummary": {
                "type": "object",
                "properties": {
                    name: {} for name in (
                        "ref", "server", "handle", "unique", "function", "state", "attempt",
                        "worker", "started_at", "finished_at", "updated_at", "expires_at",
                        "numerator", "denominator", "error_kind")
                },
            },
            "JobPage": {
                "type": "object",
                "properties": {
                    "jobs": {"type": "array", "items": _ref("JobSummary")},
                    "cursor": {"type": ["string", "null"]},
                    "counts": _ref("Counts"),
                },
            },
            "Job": {"type": "object",
                    "description": "the gearstash.job/1 record plus ref, state, known, running, "
                    "numerator, denominator, server_reachable, restarts (a token's view has no "
                    "workload)"},
        }
    },
}  # fmt: skip


async def schema_route(request: Request) -> Response:
    """``GET /api/openapi.json`` (public: it describes, it lists nothing)."""
    return JSONResponse(SCHEMA)
