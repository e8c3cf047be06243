"""A self-contained report.html, rendered from data with a jinja2 template.

The page is built from the leaderboard rows and the report's records, never from text: the
template (``templates/report.html``, shipped in the package) receives cells already formatted by
the leaderboard's :func:`~genbench.report.leaderboard.format_value` (one formatting for every
renderer), and jinja2 escapes every value. So a cell holding "|" or "<" shows as written, and a
row is styled as failed because its ``status`` is "failed", not because the word appears in it.
Every image is embedded as a data URI, so the file can be mailed or archived.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from genbench.metrics.catalogue import CONDITIONAL_COLUMNS, aggregated
from genbench.report.leaderboard import (
    EXTRA_COLUMNS,
    METRICS,
    column_title,
    format_cell,
    format_interval,
    format_value,
)

TEMPLATE = "report.html"


_CODE_SPAN = re.compile(r"`([^`]+)`")


def code_spans(text: object) -> Markup:
    """Generated sentences mark keys and commands as `code` (as in markdown): escape the text,
    then show those spans in <code>."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(str(text)))))


def environment() -> Environment:
    """The jinja2 environment of the report: autoescaping on for every template, and an undefined
    variable is an error (a renamed key fails the tests instead of rendering blank)."""
    env = Environment(
        loader=PackageLoader("genbench.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["code_spans"] = code_spans
    return env


def data_uri(path: Path | str | None) -> str | None:
    """A PNG file as a ``data:`` URI (None when there is no such file)."""
    if path is None or not Path(path).is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _is_family(row: dict[str, Any]) -> bool:
    return row.get("kind", "family") == "family"


def _present(rows: list[dict[str, Any]], key: str) -> bool:
    return any(r.get(key) is not None for r in rows if _is_family(r))


def _row_class(row: dict[str, Any]) -> str:
    """The CSS class of a row, from its data: failed/partial status, or the floor/spread rows."""
    if row.get("status") in ("failed", "partial"):
        return str(row["status"])
    return {"floor": "reference", "spread": "spread"}.get(str(row.get("kind")), "")


def _status(row: dict[str, Any]) -> str:
    errors = row.get("errors") or []
    return str(row.get("status", "")) + (f" ({'; '.join(map(str, errors))})" if errors else "")


def _cell(text: str, note: str = "", cls: str = "") -> dict[str, str]:
    """A table cell: its text, a small second line (an interval), and "text" for left-aligned
    words (numbers are right-aligned)."""
    return {"text": text, "note": note, "cls": cls}


def _metric_cell(row: dict[str, Any], key: str) -> dict[str, str]:
    ci = row.get(f"{key}_ci")
    return _cell(format_cell(row, key), f"95% CI {format_interval(key, ci)}" if ci else "")


def _table(title: str, keys: list[str], rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    return {
        "title": title,
        "head": [_cell("family", cls="text"), *[_cell(column_title(k)) for k in keys], _cell("status", cls="text")],
        "rows": [
            {
                "class": _row_class(r),
                "cells": [
                    _cell(str(r.get("family", "")), cls="text"),
                    *[_metric_cell(r, k) for k in keys],
                    _cell(_status(r), cls="text"),
                ],
            }
            for r in rows
        ],
        "note": note,
    }


def _cost_table(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    family_rows = [r for r in rows if _is_family(r)]
    samplers = sorted({s for r in family_rows for s in (r.get("sampling_images_per_second") or {})})
    columns: list[tuple[str, Any]] = [
        (title, (lambda r, k=key: format_value(k, r.get(k))))
        for key, title in (
            ("num_parameters", "parameters"),
            ("train_images_per_second", "train img/s"),
            ("train_seconds", "train s"),
            ("images_seen", "images seen"),
            ("cpu_seconds", "CPU s"),
        )
        if _present(rows, key)
    ]
    if _present(rows, "load_avg"):

        def load(r: dict[str, Any]) -> str:
            text = format_value("load_avg", r.get("load_avg"))
            return text + (f" / {r['cpu_count']}" if r.get("cpu_count") and r.get("load_avg") is not None else "")

        columns.append(("load / cores", load))
    for s in samplers:
        columns.append(
            (
                f"sample img/s ({s})",
                lambda r, s=s: format_value(
                    "sample_images_per_second", (r.get("sampling_images_per_second") or {}).get(s)
                ),
            )
        )
    if not columns:
        return None
    return {
        "title": "Cost",
        "head": [_cell("family", cls="text"), *[_cell(c[0]) for c in columns]],
        "rows": [
            {
                "class": _row_class(r),
                "cells": [_cell(str(r["family"]), cls="text"), *[_cell(f(r)) for _, f in columns]],
            }
            for r in family_rows
        ],
        "note": "",
    }


#: what the conditional table's numbers mean (shown under it)
CONDITIONAL_NOTE = (
    "Samples asked for each class in turn. Class accuracy: the share the in-domain classifier assigns to the "
    "class asked for (mean over classes; real images reach about the classifier's own test accuracy). "
    "Intra-class FID: FID of each class's samples against that class's real images, averaged over classes. "
    "The floor row scores real training images at the same number per class."
)


def headline_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The main table's metric columns: FID, KID, IS, precision, recall, and the new measures
    (bits/dim, classes covered, class KL, memorised fraction) where any family has them."""
    return [k for k, _, _ in METRICS] + [k for k in EXTRA_COLUMNS if _present(rows, k)]


def leaderboard_tables(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leaderboard as tables of formatted cells: the headline metrics (:func:`headline_keys`),
    the other metric keys the rows hold (bound variants, distances), and cost. Only columns some
    family has are shown."""
    headline = headline_keys(rows)
    conditional = [k for k in CONDITIONAL_COLUMNS if _present(rows, k)]
    details = [
        k
        for k in aggregated(k for r in rows for k in r)
        if k not in headline and k not in conditional and _present(rows, k)
    ]
    tables = [_table("Leaderboard", headline, rows)]
    if conditional:
        tables.append(
            _table(
                "Conditional",
                conditional,
                [r for r in rows if _is_family(r) or r.get("kind") == "floor"],
                note=CONDITIONAL_NOTE,
            )
        )
    if details:
        tables.append(_table("Details", details, [r for r in rows if _is_family(r)]))
    cost = _cost_table(rows)
    if cost:
        tables.append(cost)
    return tables


def render_html(page: dict[str, Any]) -> str:
    """``page`` (see :func:`genbench.report.build.report_page`) through the report template."""
    return environment().get_template(TEMPLATE).render(**page)


def write_html(path: Path, page: dict[str, Any]) -> Path:
    from genbench.io import atomic_write_bytes

    atomic_write_bytes(path, render_html(page).encode())
    return path
