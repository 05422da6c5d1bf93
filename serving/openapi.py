"""The published OpenAPI document: BentoML's, completed with what the service really does.

BentoML 1.4 writes the POST APIs with its own error schemas (InvalidArgument, NotFound, InternalServerError) and
knows nothing of the mounted GET routes, the API key or the refusals that the middleware sends. `complete`
rewrites the document so that a client generated from it is right:
- `info`: the distribution's version and summary (importlib.metadata, or in a bento the pyproject.toml it
  carries), the contract version and the key;
- `components.securitySchemes` (the X-API-Key header and Bearer) and `security` on each route that needs the
  key under the server's settings (none without NFC_API_KEY; the read routes not with NFC_API_KEY_READS=open);
- the GET read routes of serving/read_routes.py with their query parameters and answer schemas;
- per route every status the service sends, each with the one error body schema, `Error`
  (serving.errors.ErrorBody), which every refusal matches.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serving.errors import ErrorBody
from serving.read_routes import READ_ROUTES

__all__ = ["DISTRIBUTION", "ERROR_STATUSES", "POST_STATUSES", "SECURITY_SCHEMES", "complete", "distribution"]

DISTRIBUTION = "neuralfusioncore"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
REF = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "The server's NFC_API_KEY."},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The server's NFC_API_KEY as a bearer token."},
}
# what each status means, as every route uses it (serving.errors holds the classes)
ERROR_STATUSES = {
    400: "The request cannot be served as sent; the message says what to fix. Nothing was written.",
    401: "The API key is missing or wrong.",
    404: "Nothing stored matches (by reference: the bar source has no bars for that as_of, or none is set).",
    408: "The request body was not complete NFC_BODY_TIMEOUT_S after its headers.",
    409: "Another request's prediction is stored for this (model version, as_of); nothing was written.",
    413: "The request body is over NFC_MAX_BODY_BYTES.",
    503: "The model, an inner service or MongoDB cannot answer now; nothing is reported stored. Retry later.",
}
# every POST API of the entry service reads a body, predicts and stores; by reference it may also find no bars
POST_STATUSES = (400, 401, 408, 409, 413, 503)
POST_EXTRA = {"/predict/at": (404,)}
READ_STATUSES = {"/latest": (400, 401, 404, 503), "/history": (400, 401, 503), "/model_info": (400, 401, 503)}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A $ref to `model`, its schema (and those it uses) added to `components`."""
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    name = schema["title"]
    components[name] = schema
    return {"$ref": REF.format(model=name)}


def _parameters(query: type[BaseModel]) -> list[dict[str, Any]]:
    """`query`'s fields as query parameters; a query string cannot carry null, so a field's null branch (the
    default when the parameter is left out) is dropped."""
    def schema_of(prop: dict[str, Any]) -> dict[str, Any]:
        options = [option for option in prop.get("anyOf", [prop]) if option.get("type") != "null"]
        kept = {k: v for k, v in options[0].items() if k not in ("description", "title")} if len(options) == 1 \
            else {"anyOf": options}
        return {**kept, **{k: prop[k] for k in ("default", "examples") if prop.get(k) is not None}}

    schema = query.model_json_schema(ref_template=REF)
    return [{"name": name, "in": "query", "required": name in schema.get("required", ()),
             "description": prop.get("description", ""), "schema": schema_of(prop)}
            for name, prop in schema.get("properties", {}).items()]


def _responses(ok: dict[str, Any], statuses: tuple[int, ...], needs_key: bool) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    retry = {"headers": {"Retry-After": {"description": "Seconds to wait before trying again.",
                                         "schema": {"type": "integer", "minimum": 0}}}}
    return {"200": {"description": "Successful Response", **ok},
            **{str(s): {"description": ERROR_STATUSES[s], "content": error, **(retry if s == 503 else {})}
               for s in statuses if s != 401 or needs_key}}


def distribution() -> tuple[str, str, str]:
    """(version, summary, license) of the installed distribution; in a bento, where the code runs from its folder
    without being installed, from the pyproject.toml the bento carries."""
    try:
        meta = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
        return project["version"], project["description"], project["license"]
    return meta["Version"], meta["Summary"], meta.get("License-Expression") or meta.get("License") or ""


def _info(api_version: str) -> dict[str, Any]:
    version, summary, license_id = distribution()
    return {"title": "NeuralFusionCore", "version": version,
            "description": f"{summary}\n\nThe portfolio service: weights from OHLCV bars and news, stored in "
                           f"MongoDB. Contract version {api_version} (gRPC package neuralfusion.v2). When the server "
                           "has an API key, send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'; every "
                           "refusal is a JSON body {\"error\": \"...\"} saying what to fix.",
            "license": {"name": license_id, "identifier": license_id}}


def complete(spec: dict[str, Any], api_version: str, key_required: bool, reads_need_key: bool) -> dict[str, Any]:
    """`spec` (BentoML's document, changed in place and returned) as the service really answers."""
    spec["openapi"] = "3.1.0"  # BentoML labels it 3.0.2 but fills it with JSON Schema 2020-12 (OpenAPI 3.1)
    spec["info"] = _info(api_version)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for bentoml_own in ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse"):
        schemas.pop(bentoml_own, None)
    _schema(ErrorBody, schemas)  # titled "Error"
    components["securitySchemes"] = SECURITY_SCHEMES
    security = [{name: []} for name in SECURITY_SCHEMES]
    paths = spec.setdefault("paths", {})
    for path, item in paths.items():
        post = item.get("post")
        if post is None or path in READ_STATUSES:
            continue
        statuses = tuple(sorted((*POST_STATUSES, *POST_EXTRA.get(path, ()))))
        post["responses"] = _responses(post["responses"]["200"], statuses, key_required)
        if key_required:
            post["security"] = security
    for path, route in READ_ROUTES.items():
        ok = {"content": {"application/json": {"schema": _schema(route.answer, schemas)}}}
        get = {"tags": ["Service APIs"], "description": (route.answer.__doc__ or "").strip(),
               "parameters": _parameters(route.query),
               "responses": _responses(ok, READ_STATUSES[path], reads_need_key)}
        if reads_need_key:
            get["security"] = security
        paths[path] = {"get": get}
    return spec
