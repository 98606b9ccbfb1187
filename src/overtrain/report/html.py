"""A static HTML report: sections of figures, tables and text, written atomically to ``DIR/index.html``.

Report code only reads the store; a study contributes a function that returns `Section`s. Figures are
matplotlib figures saved beside the page as a 2x PNG (sharp on high-density screens, shown at its 1x size)
and as SVG (vector, for a paper), so a person can open them alone too. Every number in a table goes
through `format_number`, so one quantity reads the same in every table.
"""

from __future__ import annotations

import html
import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from overtrain.core.atomic import atomic_write_bytes, atomic_write_text

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #d8dce4; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
.scroll { overflow-x: auto; max-width: 100%; }
tr.below td { color: #4b5563; font-size: .9em; border-top: none; padding-left: 1.5em; }
.summary { background: #f6f8fb; border: 1px solid #d8dce4; border-radius: 6px; padding: .2em 1em .6em; }
.summary h2 { border: none; margin-top: .6em; } .summary ul { margin: .3em 0; padding-left: 1.3em; }
.summary figure img { max-height: 340px; width: auto; }
th, td { border: 1px solid #d8dce4; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176f2c; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.na { color: #6b7280; font-weight: 600; } .under { color: #9a6700; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eceff4; }
figcaption { color: #4b5563; font-size: .92em; } .note { color: #4b5563; }
code { background: #f3f5f9; padding: 0 .25em; border-radius: 3px; }
details { margin: .6em 0; }
"""


@dataclass
class Figure:
    """A matplotlib figure and its caption; `name` becomes the PNG file name."""

    name: str
    figure: Any
    caption: str = ""
    main: bool = False
    """The study's main figure (the paper's headline plot): shown again in its summary."""


@dataclass
class FigureRef:
    """A figure written elsewhere in the same report (by its `Figure.name`), shown again, e.g. a study's
    main figure in its summary."""

    name: str
    caption: str = ""


@dataclass
class Table:
    """Rows of dicts (the first row's keys are the columns)."""

    rows: list[dict[str, Any]]
    caption: str = ""
    collapsed: bool = False
    """Render inside a closed ``<details>`` (long lists a reader opens on demand, e.g. every run)."""
    below: str | None = None
    """A column of long text (e.g. a claim's detail) drawn as a full-width line under its row: as a
    column it is squeezed to a few words per line and makes every row tall."""


@dataclass
class Section:
    """A titled part of the report: text paragraphs (HTML allowed), figures, tables, in that order."""

    title: str
    text: list[str] = field(default_factory=list)
    figures: list[Figure | FigureRef] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)
    """Collapsed blocks ``(summary, preformatted text)``, e.g. resolved configs."""
    summary: bool = False
    """A study's one-screen summary: drawn as a box, its figures may be `FigureRef`s."""


def format_number(value: float | int) -> str:
    """The one number format of the report's tables: integers (and integral floats of a count's size,
    e.g. a token budget stored as a float) with thousands separators; other floats to 4 significant
    digits, with separators from 1,000 up and in scientific notation below 0.001 or from 10^15 up."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    v = float(value)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    if abs(v) >= 1e15 or abs(v) < 1e-3:
        return f"{v:.3e}"
    if abs(v) >= 1e3:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{format_number(value)}</td>"
    if isinstance(value, (int, float)):
        return f'<td class="num">{format_number(value)}</td>'
    text = str(value)
    if text in ("PASS", "FAIL", "N/A", "UNDERPOWERED"):
        css = {"PASS": "pass", "FAIL": "fail", "N/A": "na", "UNDERPOWERED": "under"}[text]
        return f'<td class="{css}">{text}</td>'
    return f"<td>{html.escape(text)}</td>"


def render_table(table: Table) -> str:
    if not table.rows:
        return f"<p class='note'>{html.escape(table.caption)}: no rows.</p>"
    columns = [c for c in table.rows[0] if c != table.below]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    lines = []
    for row in table.rows:
        lines.append("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>")
        if table.below is not None and row.get(table.below):
            text = html.escape(str(row[table.below]))
            lines.append(f"<tr class='below'><td colspan='{len(columns)}'>{text}</td></tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    # wide tables (the audit's 18 columns) scroll inside their box instead of running off the page
    block = f"<div class='scroll'><table>{caption}<tr>{head}</tr>{''.join(lines)}</table></div>"
    if table.collapsed:
        what = html.escape(table.caption or "table")
        return f"<details><summary>{what} ({len(table.rows):,} rows)</summary>{block}</details>"
    return block


_BLOCK_TAGS = ("<ul", "<ol", "<div", "<table")
"""Section text starting with these is a block of its own (a list inside a ``<p>`` is invalid HTML)."""


def _png_width(png: bytes) -> int:
    """Pixel width from a PNG's IHDR chunk (bytes 16-20, big-endian)."""
    return struct.unpack(">I", png[16:20])[0]


def _figure_html(name: str, caption: str, width: int | None) -> str:
    size = f" width='{width}'" if width else ""
    return (
        f"<figure><img src='{name}.png'{size} alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)} <a href='{name}.svg'>SVG</a></figcaption></figure>"
    )


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], *, dpi: int = 110) -> Path:
    """Write ``out_dir/index.html`` and, per figure, ``NAME.png`` (at 2 x `dpi`, shown at 1 x) and
    ``NAME.svg``; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the run store. "
        "Every number below comes from stored runs; see Provenance.</p>",
    ]
    toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
    parts.append(f"<ul>{toc}</ul>")
    widths: dict[str, int] = {}
    body: list[str] = []
    # figures first, so a summary's `FigureRef` knows the size of a figure drawn in a later section
    for section in sections:
        for fig in section.figures:
            if isinstance(fig, FigureRef):
                continue
            png = io.BytesIO()
            fig.figure.savefig(png, format="png", dpi=2 * dpi, bbox_inches="tight")
            svg = io.BytesIO()
            fig.figure.savefig(svg, format="svg", bbox_inches="tight")
            plt.close(fig.figure)
            atomic_write_bytes(out / f"{fig.name}.png", png.getvalue())
            atomic_write_bytes(out / f"{fig.name}.svg", svg.getvalue())
            widths[fig.name] = _png_width(png.getvalue()) // 2
    for i, section in enumerate(sections):
        heading = f"<h2 id='s{i}'>{html.escape(section.title)}</h2>"
        block = [heading, *(p if p.startswith(_BLOCK_TAGS) else f"<p>{p}</p>" for p in section.text)]
        for fig in section.figures:
            block.append(_figure_html(fig.name, fig.caption, widths.get(fig.name)))
        block.extend(render_table(t) for t in section.tables)
        for summary, text in section.details:
            block.append(
                f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
            )
        body.append(
            f"<section class='summary'>{''.join(block)}</section>" if section.summary else "\n".join(block)
        )
    parts.extend(body)
    parts.append("</body></html>")
    page = out / "index.html"
    atomic_write_text(page, "\n".join(parts))
    return page
