"""A static HTML report: sections of figures, tables and text, written atomically to ``DIR/index.html``.

Report code only reads the store; a study contributes a function that returns `Section`s. Figures are
matplotlib figures saved as PNG beside the page (so a person can open them alone too).
"""

from __future__ import annotations

import html
import io
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
th, td { border: 1px solid #d8dce4; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176f2c; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.na { color: #6b7280; font-weight: 600; } .under { color: #9a6700; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eceff4; }
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


@dataclass
class Table:
    """Rows of dicts (the first row's keys are the columns)."""

    rows: list[dict[str, Any]]
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report: text paragraphs (HTML allowed), figures, tables, in that order."""

    title: str
    text: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)
    """Collapsed blocks ``(summary, preformatted text)``, e.g. resolved configs."""


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    text = str(value)
    if text in ("PASS", "FAIL", "N/A", "UNDERPOWERED"):
        css = {"PASS": "pass", "FAIL": "fail", "N/A": "na", "UNDERPOWERED": "under"}[text]
        return f'<td class="{css}">{text}</td>'
    return f"<td>{html.escape(text)}</td>"


def render_table(table: Table) -> str:
    if not table.rows:
        return f"<p class='note'>{html.escape(table.caption)}: no rows.</p>"
    columns = list(table.rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<tr>{head}</tr>{body}</table>"


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], *, dpi: int = 110) -> Path:
    """Write ``out_dir/index.html`` and one PNG per figure; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the run store. "
        "Every number below comes from stored runs; see Provenance.</p>",
    ]
    toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
    parts.append(f"<ul>{toc}</ul>")
    for i, section in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        parts.extend(f"<p>{p}</p>" for p in section.text)
        for fig in section.figures:
            buffer = io.BytesIO()
            fig.figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
            plt.close(fig.figure)
            atomic_write_bytes(out / f"{fig.name}.png", buffer.getvalue())
            parts.append(
                f"<figure><img src='{fig.name}.png' alt='{html.escape(fig.caption)}'>"
                f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
            )
        parts.extend(render_table(t) for t in section.tables)
        for summary, text in section.details:
            parts.append(
                f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
            )
    parts.append("</body></html>")
    page = out / "index.html"
    atomic_write_text(page, "\n".join(parts))
    return page
