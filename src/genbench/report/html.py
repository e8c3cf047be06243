"""A self-contained report.html: every image is embedded, so the file can be mailed or archived."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from genbench.report.leaderboard import markdown_table

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.failed{color:#b00}
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(md: str) -> str:
    lines = [ln for ln in md.strip().splitlines() if not set(ln) <= set("|-")]
    out = ["<table>"]
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        cls = ' class="failed"' if "failed" in line and i else ""
        out.append(f"<tr{cls}>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(
    path: Path, title: str, rows: list[dict[str, Any]], figures: dict[str, Path | None], context: dict[str, Any]
) -> Path:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if context.get("budget"):
        parts.append(f"<h2>Budget</h2><p>{html.escape(str(context['budget'].get('description', '')))}</p>")
    parts.append("<h2>Leaderboard</h2>" + _table(markdown_table(rows)))
    parts.append(
        "<p>Mean ± standard deviation over seeds; ↓ lower is better, ↑ higher is better. "
        "FID/KID/IS/precision/recall from torch-fidelity with the extractor and sample count below, "
        "against the real test split.</p>"
    )
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_img(fig, name)}")
    parts.append(
        "<h2>Environment</h2><pre>" + html.escape(json.dumps(context.get("environment", {}), indent=2)) + "</pre>"
    )
    parts.append(
        "<h2>Configuration</h2><pre>"
        + html.escape(json.dumps(context.get("config", {}), indent=2, default=str))
        + "</pre>"
    )
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
