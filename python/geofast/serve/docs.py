"""An API reference page that works offline: it fetches ``/openapi.json`` from the same server
and lists every route with its parameters, request fields and responses. Written for geofast
(plain HTML, CSS and a few lines of JavaScript; nothing loaded from anywhere else).

The page is served with :data:`DOCS_CSP`: its one inline script is allowed by its SHA-256 hash,
nothing else may run, load (but ``openapi.json`` from the same origin) or frame the page."""

from __future__ import annotations

import base64
import hashlib
import html
import re

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ API</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 1.5rem; color: #1d232a; }
  h1 { margin-bottom: 0.2rem; } .sub { color: #5a6570; margin-top: 0; }
  section.op { border: 1px solid #d3d9de; border-radius: 6px; margin: 1rem 0; padding: 0.6rem 1rem; }
  .verb { display: inline-block; min-width: 3.6rem; font-weight: 700; font-family: ui-monospace, monospace; }
  .GET { color: #1769aa; } .POST { color: #2e7d32; } .path { font-family: ui-monospace, monospace; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; margin: 0.4rem 0; font-size: 14px; }
  th, td { text-align: left; border-bottom: 1px solid #e6eaee; padding: 0.25rem 0.5rem; vertical-align: top; }
  code { font-family: ui-monospace, monospace; background: #f3f5f7; padding: 0 0.2rem; border-radius: 3px; }
  .muted { color: #5a6570; } #error { color: #b00020; }
</style>
</head>
<body>
<h1>__TITLE__ <span class="muted">__VERSION__</span></h1>
<p class="sub">HTTP API reference, rendered from <a href="openapi.json">openapi.json</a>.
Routes under <code>/v1/</code> need <code>Authorization: Bearer KEY</code> or <code>X-API-Key: KEY</code>
when the server has a key.</p>
<p id="error"></p>
<div id="ops"></div>
<script>
"use strict";
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of [].concat(children || [])) node.append(c instanceof Node ? c : String(c));
  return node;
}
function resolve(spec, schema) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 10; i++) {
    s = s.$ref.replace(/^#\\//, "").split("/").reduce((o, k) => (o || {})[k], spec) || {};
  }
  return s;
}
function typeOf(spec, schema) {
  const s = resolve(spec, schema);
  if (s.anyOf) return s.anyOf.map(x => typeOf(spec, x)).join(" | ");
  if (s.type === "array") return typeOf(spec, s.items || (s.prefixItems ? {type: "[" + s.prefixItems.map(x => typeOf(spec, x)).join(", ") + "]"} : {})) + "[]";
  if (s.format === "binary") return "file";
  return s.type || s.title || "object";
}
function fieldTable(spec, schema) {
  const s = resolve(spec, schema);
  const props = s.properties || {};
  const required = new Set(s.required || []);
  const rows = Object.entries(props).map(([name, p]) => {
    const r = resolve(spec, p);
    const dflt = r.default === undefined ? "" : JSON.stringify(r.default);
    return el("tr", {}, [el("td", {}, el("code", {}, name)), el("td", {}, typeOf(spec, p)),
      el("td", {}, required.has(name) ? "yes" : dflt ? "default " + dflt : "no"), el("td", {}, r.description || "")]);
  });
  if (!rows.length) return el("p", {class: "muted"}, typeOf(spec, schema));
  return el("table", {}, [el("tr", {}, ["field", "type", "required", "description"].map(h => el("th", {}, h))), ...rows]);
}
function render(spec) {
  const ops = document.getElementById("ops");
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [verb, op] of Object.entries(item)) {
      const v = verb.toUpperCase();
      const sec = el("section", {class: "op", id: (v + path).replace(/[^A-Za-z0-9]+/g, "-")}, [
        el("div", {}, [el("span", {class: "verb " + v}, v), " ", el("span", {class: "path"}, path)]),
        el("p", {}, op.summary || op.description || ""),
      ]);
      const params = op.parameters || [];
      if (params.length) {
        sec.append(el("h4", {}, "Parameters"));
        sec.append(el("table", {}, [el("tr", {}, ["name", "in", "type", "required"].map(h => el("th", {}, h))),
          ...params.map(p => el("tr", {}, [el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
            el("td", {}, typeOf(spec, p.schema)), el("td", {}, p.required ? "yes" : "no")]))]));
      }
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        for (const [type, media] of Object.entries(body)) {
          sec.append(el("h4", {}, ["Request body ", el("code", {}, type)]));
          sec.append(fieldTable(spec, media.schema));
        }
      }
      const responses = Object.entries(op.responses || {});
      if (responses.length) {
        sec.append(el("h4", {}, "Responses"));
        sec.append(el("table", {}, [el("tr", {}, ["status", "meaning", "body"].map(h => el("th", {}, h))),
          ...responses.map(([code, r]) => {
            const json = r.content && r.content["application/json"];
            return el("tr", {}, [el("td", {}, code), el("td", {}, r.description || ""),
              el("td", {}, json && json.schema ? typeOf(spec, json.schema) : "")]);
          })]));
      }
      ops.append(sec);
    }
  }
}
fetch("openapi.json").then(r => r.json()).then(render).catch(e => {
  document.getElementById("error").textContent = "could not load openapi.json: " + e;
});
</script>
</body>
</html>
"""


def docs_page_html(title: str, version: str) -> str:
    """The self-contained API reference page (relative links only: works behind a path prefix)."""
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__VERSION__", html.escape(version))


def _script_hash() -> str:
    found = re.search(r"<script>(.*?)</script>", _PAGE, re.S)
    assert found is not None
    return base64.b64encode(hashlib.sha256(found.group(1).encode("utf-8")).digest()).decode("ascii")


#: The Content-Security-Policy header of ``/docs``.
DOCS_CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'sha256-{_script_hash()}'",
        "style-src 'unsafe-inline'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
