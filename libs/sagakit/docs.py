"""Each service's docs, readable with no internet: Swagger UI and an HTML view of its AsyncAPI.

FastAPI's own ``/docs`` page loads Swagger UI's JS and CSS (and a favicon) from public hosts, so
on a machine without internet it shows a blank page. Here the same page points at the copy the
pinned ``fastapi-offline`` package ships (Swagger UI 5, which reads OpenAPI 3.1), served by the
service under ``/docs/<service>/assets/``: the gateway's ``/docs/<service>`` routing already
carries it, and a service deployed without the gateway has working docs too.

The AsyncAPI document (``asyncapi.json``) gets a server-rendered page, ``/docs/<service>/asyncapi``,
instead of AsyncAPI's React viewer, which is a large bundle of its own to vendor: a list of what
the service consumes and publishes, each message with its payload's fields.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from sagakit.events import EVENT_MODELS

# swagger-ui-bundle.js, swagger-ui.css and favicon.png (and ReDoc, unused) as package data.
SWAGGER_ASSETS = str(files("fastapi_offline") / "static")


def docs_paths(service: str) -> dict[str, str]:
    base = f"/docs/{service}"
    return {"ui": base, "assets": f"{base}/assets", "openapi": f"{base}/openapi.json",
            "asyncapi": f"{base}/asyncapi.json", "asyncapi_html": f"{base}/asyncapi"}


def add_swagger_ui(app: FastAPI, service: str) -> None:
    """``/docs/<service>``: Swagger UI from the service's own copy of its assets."""
    paths = docs_paths(service)
    app.mount(paths["assets"], StaticFiles(directory=SWAGGER_ASSETS), name=f"{service}-docs")

    @app.get(paths["ui"], include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=paths["openapi"],
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{paths['assets']}/swagger-ui-bundle.js",
            swagger_css_url=f"{paths['assets']}/swagger-ui.css",
            swagger_favicon_url=f"{paths['assets']}/favicon.png",
            oauth2_redirect_url=None,
            # The validator badge is an image from a public validator service: off.
            swagger_ui_parameters={"validatorUrl": None},
        )


# --- AsyncAPI 3 as HTML --------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; vertical-align: top; }
code { background: #f4f4f4; padding: 0 .2em; }
section.message { border-left: 4px solid #89bf04; padding-left: 1em; margin: 1.5em 0; }
pre { background: #f4f4f4; padding: .5em; overflow-x: auto; }
"""

# A schema's title is its pydantic model's name; the contract knows each model's CloudEvents type.
_EVENT_TYPES = {model.__name__: str(event_type) for event_type, model in EVENT_MODELS.items()}


def _resolve(spec: Mapping[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` (FastStream percent-encodes the keys it puts in one)."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = spec
        for part in ref[2:].split("/"):
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, Mapping) else None
        if target is None:
            return node
        node = target
    return node


def _schema_name(node: Mapping[str, Any]) -> str | None:
    ref = node.get("$ref")
    return unquote(ref.rsplit("/", 1)[-1]) if isinstance(ref, str) else None


def _type_of(spec: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    if (name := _schema_name(node)) is not None:
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    for union in ("anyOf", "oneOf"):
        if union in node:
            return " | ".join(_type_of(spec, option) for option in node[union])
    if "enum" in node:
        return " | ".join(f"<code>{html.escape(json.dumps(v))}</code>" for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array" and isinstance(node.get("items"), Mapping):
        return f"array of {_type_of(spec, node['items'])}"
    detail = f" ({html.escape(node['format'])})" if "format" in node else ""
    return f"{html.escape(str(kind))}{detail}"


def _payload_schemas(spec: Mapping[str, Any], payload: Any) -> list[str]:
    """The named schemas a message's payload may be (one, or each of a ``oneOf``)."""
    if not isinstance(payload, Mapping):
        return []
    if (name := _schema_name(payload)) is not None:
        return [name]
    return [n for option in payload.get("oneOf", payload.get("anyOf", []))
            if isinstance(option, Mapping) and (n := _schema_name(option))]


def _fields_table(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    properties: Mapping[str, Any] = schema.get("properties", {})
    if not properties:
        return ""
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{_type_of(spec, prop)}</td>"
        f"<td>{'yes' if name in required else 'no'}</td>"
        f"<td>{html.escape(prop.get('description', ''))}</td></tr>"
        for name, prop in properties.items()
    )
    return ("<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>"
            f"{rows}</table>")


def _operation(spec: Mapping[str, Any], name: str, operation: Mapping[str, Any]) -> str:
    channel = _resolve(spec, operation.get("channel", {}))
    amqp = channel.get("bindings", {}).get("amqp", {})
    where = (f"queue <code>{html.escape(amqp['queue']['name'])}</code>" if "queue" in amqp else
             f"exchange <code>{html.escape(amqp.get('exchange', {}).get('name', '?'))}</code>")
    address = channel.get("address") or ""
    verb = "consumes" if operation.get("action") == "receive" else "publishes"
    messages = [_resolve(spec, m) for m in operation.get("messages", [])]
    schemas = [s for m in messages for s in _payload_schemas(spec, m.get("payload"))]
    listed = ", ".join(
        f'<a href="#schema-{html.escape(s)}"><code>{html.escape(_EVENT_TYPES.get(s, s))}</code>'
        f"</a>" for s in schemas) or "(no payload schema)"
    description = channel.get("description") or operation.get("description") or ""
    return (f"<tr><td>{verb}</td><td>{where}<br>routing key <code>{html.escape(address)}</code>"
            f"</td><td>{listed}</td><td>{html.escape(description)}</td></tr>")


def asyncapi_html(spec: Mapping[str, Any], json_url: str) -> str:
    """An AsyncAPI 3 document as one self-contained HTML page (no scripts, no external URL)."""
    info = spec.get("info", {})
    title = html.escape(info.get("title", "AsyncAPI"))
    servers = "".join(
        f"<li><code>{html.escape(name)}</code>: {html.escape(s.get('protocol', ''))} "
        f"{html.escape(s.get('protocolVersion', ''))}, host <code>{html.escape(s.get('host', ''))}"
        f"</code></li>" for name, s in spec.get("servers", {}).items())
    operations = "".join(_operation(spec, name, op)
                         for name, op in spec.get("operations", {}).items())
    schemas: Mapping[str, Any] = spec.get("components", {}).get("schemas", {})
    messages = "".join(
        f'<section class="message" id="schema-{html.escape(name)}">'
        f"<h3><code>{html.escape(_EVENT_TYPES.get(name, name))}</code> ({html.escape(name)})</h3>"
        f"<p>{html.escape(schema.get('description', ''))}</p>"
        f"{_fields_table(spec, schema)}"
        f"<details><summary>JSON Schema</summary><pre>"
        f"{html.escape(json.dumps(schema, indent=2))}</pre></details></section>"
        for name, schema in schemas.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<p>AsyncAPI {html.escape(spec.get('asyncapi', ''))}, version {html.escape(info.get('version', ''))}.
Every event travels on the topic exchange <code>saga.events</code> with its CloudEvents type as
the routing key; the body is the JSON below, the CloudEvents attributes are AMQP headers
(<code>ce-type</code>, <code>ce-id</code>, ...). The machine-readable document:
<a href="{html.escape(json_url)}">asyncapi.json</a>.</p>
<h2>Servers</h2><ul>{servers}</ul>
<h2>Operations</h2>
<table><tr><th>action</th><th>where</th><th>messages</th><th>description</th></tr>
{operations}</table>
<h2>Messages</h2>
{messages}
</body></html>
"""
