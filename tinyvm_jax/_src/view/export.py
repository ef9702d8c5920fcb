"""One row or one comparison as a self-contained HTML file.

The file holds the viewer's own stylesheet and script inline and the page's
data as a JSON script element; opened from disk (no server), the script
finds the data and draws the same step view, read-only.
"""

import json
import re
from typing import Any, Mapping

BUNDLE_ID = "tinyvm-bundle"


def _inline_json(obj: Any) -> str:
  """JSON safe inside a <script> element (no `<`, so no `</script>`)."""
  return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c")


def file_name(payload: Mapping[str, Any]) -> str:
  """A file name for an exported page: tinyvm-<group>-<index>[-compare].html"""
  m = payload.get("meta") or payload.get("view", {}).get("meta", {})
  stem = f"tinyvm-{m.get('group', 'row')}-{m.get('index', 0)}"
  if payload.get("kind") == "compare":
    stem += "-compare"
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + ".html"


def export_html(payload: Mapping[str, Any], assets: Mapping[str, bytes]
                ) -> str:
  """The HTML text of a self-contained page showing `payload` (a row view
  or a comparison, as the API returns them).

  Args:
    payload: the JSON-ready dict of `model.row_view` or `compare.compare`.
    assets: the viewer's static files by name (style.css, app.js).
  """
  css = assets["style.css"].decode()
  js = assets["app.js"].decode().replace("</script", "<\\/script")
  kind = payload.get("kind", "row")
  m = payload.get("meta") or payload.get("view", {}).get("meta", {})
  title = (f"tinyvm {kind}: {m.get('dataset', '')} {m.get('group', '')} "
           f"row {m.get('index', '')}")
  title = re.sub(r"[<>&\"']", "", title)
  return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body class="exported">
<header class="top"><span class="brand">tinyvm view</span>
<span class="exported-note">exported {kind}, read-only</span></header>
<main id="main"></main>
<script type="application/json" id="{BUNDLE_ID}">{_inline_json(payload)}</script>
<script>
{js}
</script>
</body>
</html>
"""
