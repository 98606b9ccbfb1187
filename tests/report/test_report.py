"""The HTML report is built from the store alone: figures, tables, provenance."""

from __future__ import annotations

import pytest

from overtrain.config import validate
from overtrain.errors import UnknownNameError, UserError
from overtrain.registry import RUN_KINDS
from overtrain.report.build import build_report
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
