"""A study's one-screen summary: its main figure, the findings that hold, and its recommendation.

Built from what every study stores the same way (the analysis run's ``claim`` rows and, where the study
gives advice, its ``recommendation`` row), so a new study gets a summary without writing one.
"""

from __future__ import annotations

import html
from typing import Any

from overtrain.analysis.claims import headline
from overtrain.report.html import Figure, FigureRef, Section, format_number
from overtrain.runs.query import Reader

MAX_LISTED = 8
"""Findings listed by name in a summary; the rest are counted (the claims table has them all)."""


def _measured(claim: dict[str, Any]) -> str:
    """``value [CI low, CI high]; fpr, power`` of a claim row, as far as it has them."""
    value = claim.get("value")
    parts = []
    if value is not None:
        text = format_number(value)
        if claim.get("ci_low") is not None and claim.get("ci_high") is not None:
            text += f" [{format_number(claim['ci_low'])}, {format_number(claim['ci_high'])}]"
        parts.append(text)
    if claim.get("fpr") is not None:
        parts.append(f"fpr {claim['fpr']:.2f}")
    if claim.get("power") is not None:
        parts.append(f"power {claim['power']:.2f}")
    return "; ".join(parts)


def study_summary(title: str, reader: Reader, study_kind: str, sections: list[Section]) -> Section | None:
    """The summary of the newest finished analysis run of `study_kind` (None when there is none).

    Args:
        title: the study's name for the reader (e.g. its registry description's first words).
        reader: the store snapshot.
        study_kind: the run kind of the study's analysis.
        sections: the study's own sections (their figure marked `Figure.main`, else their first, is the
            study's main figure).
    """
    run = reader.latest(study_kind)
    if run is None:
        return None
    rows = reader.evals(run["run_id"])
    claims = [r for r in rows if r.get("record") == "claim"]
    advice = next((r.get("text") for r in rows if r.get("record") == "recommendation" and r.get("text")), "")
    held = [c for c in claims if (c.get("type") or "finding") == "finding" and c["verdict"] == "PASS"]
    text = [f"<b>{html.escape(headline(claims))}</b>" if claims else "No claims stored for this study."]
    if advice:
        text.append(f"<b>Recommendation.</b> {html.escape(advice)}")
    if held:
        items = "".join(
            f"<li>{html.escape(c['claim'])}: {html.escape(_measured(c))}</li>" for c in held[:MAX_LISTED]
        )
        more = f"<li>and {len(held) - MAX_LISTED} more (claims table)</li>" if len(held) > MAX_LISTED else ""
        text += ["Findings that hold:", f"<ul>{items}{more}</ul>"]
    elif claims:
        text.append("No finding holds at this scale; the claims table below says by how much each missed.")
    figures = [f for s in sections for f in s.figures if isinstance(f, Figure)]
    main = next((f for f in figures if f.main), figures[0] if figures else None)
    figures = [FigureRef(main.name, main.caption)] if main is not None else []
    return Section(f"{title}: summary", text=text, figures=figures, summary=True)
