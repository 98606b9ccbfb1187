"""The HTML report is built from the store alone: figures, tables, provenance."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from overtrain.config import validate
from overtrain.errors import UnknownNameError, UserError
from overtrain.registry import RUN_KINDS
from overtrain.report.build import build_report, provenance_section
from overtrain.report.html import (
    Figure,
    FigureRef,
    Section,
    Table,
    _cell,
    format_number,
    render_table,
    write_report,
)
from overtrain.report.plots import log_y, new_figure
from overtrain.runs.query import Reader
from overtrain.runs.store import Store
from overtrain.training.pretrain_config import PretrainConfig


def test_empty_store_is_a_user_error(home, tmp_path):
    with pytest.raises(UserError, match="nothing to report"):
        build_report(tmp_path / "r")


def test_report_of_a_pretraining_run(home, tmp_path, tiny_pretrain):
    store = Store()
    out = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    page = build_report(tmp_path / "r")
    text = page.read_text()
    assert (tmp_path / "r" / "pretrain_loss.png").stat().st_size > 10_000
    assert "<img src='pretrain_loss.png'" in text and out.run_id in text
    assert text.count("<tr>") >= 1 + 2 + 1 + 1  # budget table header + 2 budgets, provenance header + 1 run
    with pytest.raises(UnknownNameError):
        build_report(tmp_path / "r2", study="no-such-study")


@pytest.mark.parametrize(
    "value, text",
    [
        (933888, "933,888"),
        (933888.0, "933,888"),  # a token count stored as a float reads like the integer
        (0.01234567, "0.01235"),
        (12.3456, "12.35"),
        (-0.5, "-0.5"),
        (2.5e-05, "2.500e-05"),
        (3e15, "3.000e+15"),
        (0.0, "0"),
        (True, "yes"),
        (float("nan"), "nan"),
    ],
)
def test_one_number_format_for_every_table(value, text):
    assert format_number(value) == text
    assert text in _cell(value)


def test_figures_are_2x_png_and_svg_tables_scroll_and_collapse(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2, 3])
    wide = [{f"column {i}": i * 1.5 for i in range(18)}]
    sections = [
        Section("Summary", figures=[FigureRef("curve", "shown again")], summary=True),
        Section(
            "Detail",
            figures=[Figure("curve", fig, "a curve")],
            tables=[Table(wide, "wide"), Table([{"a": 1}, {"a": 2}], "every row", collapsed=True)],
        ),
    ]
    page = write_report(tmp_path, "t", sections, dpi=100).read_text()
    png = (tmp_path / "curve.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    assert 700 <= width <= 820  # 4 in at 2 x 100 dpi, trimmed by bbox_inches="tight"
    assert page.count(f"<img src='curve.png' width='{width // 2}'") == 2  # the summary's reference too
    assert (tmp_path / "curve.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "<a href='curve.svg'>SVG</a>" in page
    assert page.index("class='summary'") < page.index("Detail</h2>")
    assert "<div class='scroll'><table><caption>wide" in page
    assert "<details><summary>every row (2 rows)</summary><div class='scroll'>" in page


def test_a_long_text_column_is_drawn_under_its_row():
    rows = [
        {"claim": "a", "verdict": "PASS", "detail": "why & how"},
        {"claim": "b", "verdict": "FAIL", "detail": ""},
    ]
    text = render_table(Table(rows, "claims", below="detail"))
    assert "<th>detail</th>" not in text and text.count("<tr>") == 3  # header + 2 rows
    assert "<tr class='below'><td colspan='2'>why &amp; how</td></tr>" in text


def test_provenance_counts_runs_by_kind_and_collapses_the_list(home, tmp_path, tiny_pretrain):
    store = Store()
    store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    with Reader(store) as reader:
        section = provenance_section(reader)
    counts, every = section.tables
    assert counts.rows == [{"kind": "pretrain", "success": 1, "total": 1}]
    assert every.collapsed and len(every.rows) == 1
    assert "1 run in the store" in section.text[0]


def test_log_y_labels_an_axis_spanning_less_than_a_decade():
    """The theory figure's y axis (0.2–0.9) had no tick labels: matplotlib labels only powers of ten."""
    fig, (ax,) = new_figure(1)
    ax.plot([1, 10, 100], [0.21, 0.4, 0.88])
    log_y(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
    values = [float(x) for x in labels]
    assert len(values) >= 3 and min(values) >= 0.2 and max(values) <= 0.9
    fig, (ax,) = new_figure(1)
    ax.plot([1, 10], [2.4, 2.6])  # a few percent: no round value but 2.5 inside
    log_y(ax)
    fig.canvas.draw()
    assert len([t for t in ax.get_yticklabels() if t.get_text()]) >= 3
    fig, (ax,) = new_figure(1)
    ax.plot([1, 2, 3], [0.35, 1.4, 0.5])
    ax.fill_between([1, 2, 3], [0, 0.3, 0.4], [0.4, 1.5, 0.6])  # a seed band down to 0 (dropped on log)
    log_y(ax)
    assert np.allclose(ax.get_yticks(), [0.3, 0.5, 0.7, 1.0, 1.5])


def test_audit_u_line_brackets_t_star_by_the_neighbouring_checkpoints():
    from overtrain.report.audit import inflection_line

    inf = {"is_u": True, "axis": "steps", "gamma": 4.0, "t_star": 104.0, "ci_low": 104.0, "ci_high": 104.0}
    inf |= {"level": 0.95, "rise": 0.112, "draws": 4}
    table = [{"step": s} for s in (32, 57, 104, 189, 342)]
    line = inflection_line(inf, table)
    assert "lowest at 104 steps (the minimum lies between the checkpoints at 57 and 189)" in line
    assert "95% bootstrap CI over 4 noise draws: 104 steps (the noise of the probe only" in line
