"""The API reference page: an OpenAPI document rendered as one self-contained HTML page.

Ours rather than BentoML's Swagger UI: that page ships a Google Tag Manager snippet
(telemetry the project keeps off) and reaches it through BentoML's private modules. This
one is plain server-rendered HTML: no script, no font, no stylesheet from elsewhere, so it
works on an offline network and leaks nothing. Try requests with the demo page or the
curl samples it shows.
"""

from __future__ import annotations

from html import escape
from typing import Any

_REF_PREFIX = "#/components/schemas/"
_CONSTRAINTS = {
    "minLength": "min length",
    "maxLength": "max length",
    "minItems": "min items",
    "maxItems": "max items",
    "minimum": "min",
    "maximum": "max",
    "pattern": "pattern",
}

_STYLE = """
  :root { --ink: #1d2330; --muted: #5d6678; --line: #d9dde5; --accent: #2f6fdf; --post: #1f7a4d; --get: #2f6fdf; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  background: #f6f7f9; }
  main { max-width: 960px; margin: 0 auto; padding: 24px 16px 48px; }
  h1 { font-size: 24px; margin: 0 0 4px; }
  h2 { font-size: 18px; margin: 0 0 6px; }
  h3 { font-size: 14px; margin: 14px 0 4px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
  a { color: var(--accent); }
  .muted { color: var(--muted); }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px; margin: 14px 0; }
  .method { display: inline-block; min-width: 54px; padding: 1px 8px; border-radius: 4px; color: #fff;
  font-size: 13px; text-align: center; }
  .method.post { background: var(--post); } .method.get { background: var(--get); }
  table { border-collapse: collapse; width: 100%; font-size: 14px; }
  th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-top: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 600; }
  code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
  pre { background: #1d2330; color: #f1f3f7; padding: 10px 12px; border-radius: 6px; overflow-x: auto; }
  nav ul { margin: 6px 0 0; padding-left: 18px; }
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _ref_name(ref: str) -> str:
    return ref.removeprefix(_REF_PREFIX)


def _type(schema: dict[str, Any]) -> str:
    """A schema's type as short HTML: `string (binary)`, `array of <a>SampleIn</a>`, `number | null`."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " | ".join(_type(option) for option in schema[union])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(_e(k) for k in kind)
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if "enum" in schema:
        return " | ".join(f"<code>{_e(v)}</code>" for v in schema["enum"])
    return _e(kind) + (f" ({_e(schema['format'])})" if "format" in schema else "")


def _notes(schema: dict[str, Any]) -> str:
    """The description and the limits of a field (its own, and inside an optional's anyOf)."""
    parts = [_e(schema["description"])] if "description" in schema else []
    for source in [schema, *schema.get("anyOf", [])]:
        parts += [f"{label}: <code>{_e(source[key])}</code>" for key, label in _CONSTRAINTS.items() if key in source]
    return "; ".join(parts)


def _fields(schema: dict[str, Any], components: dict[str, Any]) -> str:
    """A table of an object schema's fields (following a $ref to its component)."""
    if "$ref" in schema:
        schema = components.get(_ref_name(schema["$ref"]), {})
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_type(field)}</td>"
        f"<td>{'required' if name in required else 'optional'}</td><td>{_notes(field)}</td></tr>"
        for name, field in properties.items()
    )
    closed = (
        ""
        if schema.get("additionalProperties", True) is not False
        else '<p class="muted">No other fields are accepted.</p>'
    )
    return f"<table><tr><th>field</th><th>type</th><th></th><th>notes</th></tr>{rows}</table>{closed}"


def _operation(method: str, path: str, op: dict[str, Any], components: dict[str, Any]) -> str:
    anchor = _e(op.get("operationId", f"{method}-{path}"))
    html = [
        f'<section class="card" id="op-{anchor}">',
        f'<h2><span class="method {_e(method)}">{_e(method.upper())}</span> <code>{_e(path)}</code> {_e(op.get("summary", ""))}</h2>',  # noqa: E501
    ]
    if "description" in op:
        html.append(f"<p>{_e(op['description'])}</p>")
    if op.get("security"):
        html.append(
            '<p class="muted">Needs <code>Authorization: Bearer &lt;token&gt;</code> when the server sets MMFUSE_API_TOKEN.</p>'  # noqa: E501
        )
    for media_type, content in op.get("requestBody", {}).get("content", {}).items():
        html.append(f"<h3>Request body: {_e(media_type)}</h3>")
        if "schema" in content:
            html.append(_fields(content["schema"], components))
    rows = []
    for status, response in op.get("responses", {}).items():
        schemas = [_type(c["schema"]) for c in response.get("content", {}).values() if "schema" in c]
        rows.append(
            f"<tr><td><code>{_e(status)}</code></td><td>{_e(response.get('description', ''))}</td><td>{', '.join(schemas)}</td></tr>"  # noqa: E501
        )
    html.append(
        f"<h3>Responses</h3><table><tr><th>status</th><th>meaning</th><th>body</th></tr>{''.join(rows)}</table>"
    )
    for sample in op.get("x-codeSamples", []):
        html.append(
            f"<h3>Example ({_e(sample.get('label', sample.get('lang', '')))})</h3><pre>{_e(sample['source'])}</pre>"
        )
    html.append("</section>")
    return "".join(html)


def render_docs(spec: dict[str, Any], *, spec_url: str, demo_url: str) -> str:
    """The whole page for `spec`: every operation (fields, limits, responses, an example) and every schema.

    `spec_url` and `demo_url` are links as written into the page (relative, so the page
    works behind a path prefix).
    """
    info = spec.get("info", {})
    components: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    operations = [(method, path, op) for path, item in spec.get("paths", {}).items() for method, op in item.items()]
    nav = "".join(
        f'<li><a href="#op-{_e(op.get("operationId", ""))}">{_e(method.upper())} {_e(path)}</a> {_e(op.get("summary", ""))}</li>'  # noqa: E501
        for method, path, op in operations
    )
    schemas = "".join(
        f'<section class="card" id="schema-{_e(name)}"><h2><code>{_e(name)}</code></h2>'
        + (f"<p>{_e(schema['description'])}</p>" if "description" in schema else "")
        + _fields(schema, components)
        + "</section>"
        for name, schema in components.items()
    )
    title = _e(info.get("title", "API"))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title} API</title><style>{_STYLE}</style></head><body><main>"
        f'<h1>{title} API <span class="muted">{_e(info.get("version", ""))}</span></h1>'
        f"<p>{_e(info.get('description', ''))}</p>"
        f'<p><a href="{_e(spec_url)}">OpenAPI document (JSON)</a> · <a href="{_e(demo_url)}">try it in the demo page</a></p>'  # noqa: E501
        f"<nav><strong>Endpoints</strong><ul>{nav}</ul></nav>"
        + "".join(_operation(method, path, op, components) for method, path, op in operations)
        + f"<h1>Schemas</h1>{schemas}</main></body></html>"
    )
