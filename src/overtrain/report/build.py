"""Assemble the report: the pre-training overview, each study's section, and provenance."""

from __future__ import annotations

from pathlib import Path

from overtrain.errors import UserError
from overtrain.registry import STUDIES
from overtrain.report.audit import audit_section
from overtrain.report.html import Section, Table, write_report
from overtrain.report.pretrain import pretrain_section
from overtrain.report.summary import study_summary
from overtrain.runs.query import Reader
from overtrain.runs.store import Store


def provenance_section(reader: Reader) -> Section:
    """Where the numbers come from: runs counted by kind and status, the failed ones listed (a diverged or
    crashed run is part of the result), and every run in a collapsed table."""
    store = reader.store
    rows = reader.rows(
        "select kind, run_id, status, git_commit, git_dirty, wall_s, finished_at from runs order by kind, run_id"
    )
    for row in rows:
        row["git_commit"] = (row["git_commit"] or "")[:10]
        row["finished_at"] = str(row["finished_at"] or "")[:19]
    statuses = sorted({r["status"] for r in rows}, key=lambda s: (s != "success", s))
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["kind"], dict.fromkeys(statuses, 0))[r["status"]] += 1
    by_kind = [{"kind": kind, **n, "total": sum(n.values())} for kind, n in counts.items()]
    failed = reader.rows(
        "select kind, run_id, status, attempts, error from runs where status != 'success' "
        "order by kind, run_id"
    )
    tables = [Table(by_kind, "Runs by kind and status"), Table(rows, "Every run", collapsed=True)]
    text = [
        f"{len(rows):,} run{'' if len(rows) == 1 else 's'} in the store <code>{store.root}</code>. Each "
        "run's resolved config and manifest are in its directory; query them with <code>overtrain query</code>."
    ]
    if failed:
        text.append(
            f"{len(failed)} run(s) did not finish successfully; their reasons are listed below "
            "(rerun the study or sweep to retry them)."
        )
        tables.insert(1, Table(failed, "Failed or unfinished runs"))
    return Section("Provenance", text=text, tables=tables)


def build_report(out_dir: str | Path, study: str | None = None, store: Store | None = None) -> Path:
    """Write the report for `study` (or everything in the store) to ``out_dir/index.html``.

    One `Reader` (one DuckDB snapshot of the store) serves every section; sections only read."""
    store = store or Store()
    with Reader(store) as reader:
        sections = _sections(reader, study)
    title = f"overtrain report: {study}" if study else "overtrain report"
    return write_report(out_dir, title, sections)


def _sections(reader: Reader, study: str | None) -> list[Section]:
    """Each study's one-screen summary first (its conclusion), then the pre-training and audit overviews,
    each study's full sections, and provenance last."""
    store = reader.store
    summaries: list[Section] = []
    sections: list[Section] = []
    if study is None or study == "pretrain":
        section = pretrain_section(reader)
        if section is not None:
            sections.append(section)
    if study in (None, "audit"):
        section = audit_section(reader)
        if section is not None:
            sections.append(section)
    names = STUDIES.names() if study in (None, "pretrain") else [study]
    for name in names if study not in ("pretrain", "audit") else []:
        entry = STUDIES.get(name)  # unknown --study: UnknownNameError, exit 2
        own = entry.sections(reader)
        if not own:
            continue
        summary = study_summary(_short_title(STUDIES.describe(name)), reader, entry.kind, own)
        summaries.extend([summary] if summary is not None else [])
        sections.extend(own)
    if not sections and (study not in (None, "pretrain") or next(store.iter_runs(), None) is None):
        raise UserError(f"nothing to report in {store.root}: run a study or `overtrain pretrain` first")
    return [*summaries, *sections, provenance_section(reader)]


def _short_title(description: str) -> str:
    """A study's name for headings: its registry description up to the first colon, which ends the name
    and citation ("Catastrophic overtraining (Springer et al. 2025)")."""
    head = description.split(":", 1)[0]
    return head if len(head) <= 80 else head[:77] + "..."
