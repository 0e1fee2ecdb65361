"""Small result tables: aligned plain text everywhere, HTML in a notebook."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from vla_rl_lib.display._output import Mode, ipython_display, resolve_mode

Rows = Sequence[Mapping[str, Any]]


def _columns(rows: Rows, columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(k for row in rows for k in row))


def format_cell(value: Any, float_format: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, float_format) if math.isfinite(value) else str(value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{format(value[0], float_format)}, {format(value[1], float_format)}]"
    return str(value)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_table(
    rows: Rows, columns: Sequence[str] | None = None, float_format: str = ".4g"
) -> str:
    """Rows of dicts as an aligned text table (numbers right-aligned, missing cells "-")."""
    cols = _columns(rows, columns)
    if not cols:
        return "(empty table)"
    cells = [[format_cell(row.get(c), float_format) for c in cols] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    numeric = [all(_is_numeric(row.get(c)) or row.get(c) is None for row in rows) for c in cols]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def html_table(rows: Rows, columns: Sequence[str] | None = None, float_format: str = ".4g") -> str:
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="text-align:{"right" if _is_numeric(row.get(c)) else "left"}">'
            f"{html.escape(format_cell(row.get(c), float_format))}</td>"
            for c in cols
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show_table(
    rows: Rows,
    columns: Sequence[str] | None = None,
    float_format: str = ".4g",
    mode: Mode = "auto",
) -> None:
    """Display rows as an HTML table (with the text table alongside) or print the text table."""
    text = summary_table(rows, columns, float_format)
    if resolve_mode(mode) == "terminal":
        print(text)
        return
    bundle = {"text/html": html_table(rows, columns, float_format), "text/plain": text}
    ipython_display()(bundle, raw=True)
