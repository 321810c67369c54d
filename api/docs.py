"""The API's documentation: ``/openapi.json`` and ``/docs``, a page that works offline.

``/docs`` is rendered on the server from the same OpenAPI document: plain HTML with its
own small stylesheet, no script, font or anything else fetched from elsewhere, so it reads
the same on a machine without network access. ``/schema`` and ``/schema/openapi.json`` (the
older URLs, served by Litestar's OpenAPI router) answer the same JSON as ``/openapi.json``.
"""

from __future__ import annotations

import html
import json
from typing import Any

from litestar import Request, Response, get
from litestar.enums import MediaType

from api import problems

OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch")

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1b1b1b; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
h3 { margin: 2rem 0 .3rem; font-family: ui-monospace, monospace; }
.method { display: inline-block; min-width: 4.5rem; padding: 0 .4rem; border-radius: 3px;
          background: #234; color: #fff; text-align: center; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
code { font-family: ui-monospace, monospace; font-size: 90%; }
.muted { color: #666; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: str | None) -> str:
    """Descriptions hold `code` spans and blank-line paragraphs; nothing else is markup."""
    if not value:
        return ""
    parts = _e(value).split("`")
    inline = "".join(
        f"<code>{part}</code>" if index % 2 else part for index, part in enumerate(parts)
    )
    return "<br>".join(inline.split("\n\n"))


def _schema(schema: dict[str, Any] | None) -> str:
    """A one-line summary of a JSON Schema."""
    if not schema:
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " | ".join(_schema(option) for option in schema[combinator])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    if kind == "array":
        return f"array of {_schema(schema.get('items'))}"
    facts = [
        f"{key} {schema[key]}"
        for key in ("format", "minimum", "maximum", "maxLength", "maxItems", "pattern")
        if key in schema
    ]
    if "enum" in schema:
        facts.append("one of " + ", ".join(str(value) for value in schema["enum"]))
    if "const" in schema:
        facts.append(f"= {schema['const']}")
    suffix = f" <span class=muted>({_e('; '.join(facts))})</span>" if facts else ""
    return f"{_e(kind)}{suffix}"


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    anchor = operation.get("operationId", f"{method}-{path}")
    out = [f'<h3 id="{_e(anchor)}"><span class=method>{_e(method.upper())}</span> {_e(path)}</h3>']
    if operation.get("description") or operation.get("summary"):
        out.append(f"<p>{_text(operation.get('description') or operation.get('summary'))}</p>")
    needs_token = operation.get("security") != []
    out.append(
        "<p class=muted>"
        + ("Needs <code>Authorization: Bearer &lt;token&gt;</code>." if needs_token else "Public.")
        + "</p>"
    )
    parameters = operation.get("parameters") or []
    if parameters:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>about</th></tr>")
        for parameter in parameters:
            required = " <span class=muted>(required)</span>" if parameter.get("required") else ""
            out.append(
                f"<tr><td><code>{_e(parameter['name'])}</code>{required}</td>"
                f"<td>{_e(parameter['in'])}</td><td>{_schema(parameter.get('schema'))}</td>"
                f"<td>{_text(parameter.get('description'))}</td></tr>"
            )
        out.append("</table>")
    body = operation.get("requestBody")
    if body:
        kinds = ", ".join(
            f"<code>{_e(media)}</code> {_schema(content.get('schema'))}"
            for media, content in body.get("content", {}).items()
        )
        required = "" if body.get("required") else " <span class=muted>(optional)</span>"
        out.append(f"<p>Body{required}: {kinds}. {_text(body.get('description'))}</p>")
    out.append("<table><tr><th>status</th><th>answer</th><th>body</th><th>headers</th></tr>")
    for status, response in sorted(operation.get("responses", {}).items()):
        media = ", ".join(
            f"<code>{_e(name)}</code> {_schema(content.get('schema'))}"
            for name, content in (response.get("content") or {}).items()
        )
        headers = ", ".join(
            f"<code>{_e(name)}</code>"
            for name in (response.get("headers") or {})
            if name != "X-Request-ID"
        )
        out.append(
            f"<tr><td>{_e(status)}</td><td>{_text(response.get('description'))}</td>"
            f"<td>{media}</td><td>{headers}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _schemas(components: dict[str, Any]) -> str:
    out = ["<h2 id=schemas>Schemas</h2>"]
    for name, schema in sorted(components.items()):
        out.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>')
        if schema.get("description"):
            out.append(f"<p>{_text(schema['description'])}</p>")
        required = set(schema.get("required", []))
        out.append("<table><tr><th>field</th><th>schema</th></tr>")
        for field, definition in schema.get("properties", {}).items():
            mark = "" if field in required else " <span class=muted>(optional)</span>"
            out.append(
                f"<tr><td><code>{_e(field)}</code>{mark}</td><td>{_schema(definition)}</td></tr>"
            )
        out.append("</table>")
    return "\n".join(out)


def _problem_types() -> str:
    out = [
        "<h2 id=problems>Problem types</h2>",
        "<p>Every error is <code>application/problem+json</code> (RFC 9457); its"
        " <code>type</code> is one of these, each also served as JSON at its URI.</p>",
        "<table><tr><th>type</th><th>status</th><th>meaning</th><th>headers</th></tr>",
    ]
    for kind in sorted(problems.REGISTRY.values(), key=lambda kind: (kind.status, kind.slug)):
        headers = ", ".join(f"<code>{_e(header.name)}</code>" for header in kind.headers)
        out.append(
            f'<tr id="problem-{_e(kind.slug)}"><td><a href="{_e(kind.uri)}">{_e(kind.slug)}</a>'
            f"</td><td>{kind.status}</td><td><b>{_e(kind.title)}</b>. {_text(kind.description)}"
            f"</td><td>{headers}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render(openapi: dict[str, Any]) -> str:
    info = openapi.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    operations = [
        (path, method, item[method])
        for path, item in openapi.get("paths", {}).items()
        for method in METHODS
        if method in item
    ]
    index = "".join(
        f'<li><a href="#{_e(operation.get("operationId", ""))}">'
        f"<code>{_e(method.upper())} {_e(path)}</code></a></li>"
        for path, method, operation in operations
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            '<p>The machine-readable form is <a href="/openapi.json">/openapi.json</a>'
            " (OpenAPI 3.1). Problem types: <a href=#problems>below</a>.</p>",
            f"<ul>{index}</ul>",
            "<h2 id=operations>Operations</h2>",
            *(_operation(path, method, operation) for path, method, operation in operations),
            _schemas(openapi.get("components", {}).get("schemas", {})),
            _problem_types(),
            "</body></html>",
        ]
    )


def _document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()


@get(
    "/openapi.json",
    exclude_from_auth=True,
    include_in_schema=False,
    sync_to_thread=False,
    media_type=OPENAPI_MEDIA_TYPE,
)
def openapi_json(request: Request[Any, Any, Any]) -> bytes:
    """The OpenAPI document (Litestar serves the same at ``/schema``, its older URL)."""
    state = request.app.state
    if "openapi_json" not in state:
        state["openapi_json"] = json.dumps(_document(request)).encode()
    return bytes(state["openapi_json"])


@get(
    "/docs",
    exclude_from_auth=True,
    include_in_schema=False,
    sync_to_thread=False,
    media_type=MediaType.HTML,
)
def docs_page(request: Request[Any, Any, Any]) -> Response[str]:
    """The API reference as one self-contained page."""
    state = request.app.state
    if "docs_html" not in state:
        state["docs_html"] = render(_document(request))
    return Response(content=str(state["docs_html"]))


DOC_ROUTES = [openapi_json, docs_page]
