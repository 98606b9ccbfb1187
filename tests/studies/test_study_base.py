"""The study layer's machinery: registration, analysis versions, redo, the generated CLI commands."""

from __future__ import annotations

import importlib
import sys

import pytest

from overtrain.cli.main import main
from overtrain.config import BaseConfig, config_hash
from overtrain.registry import RUN_KINDS, STUDIES, Registry
from overtrain.runs.kinds import RunKind, code_digest
from overtrain.runs.query import Reader
from overtrain.runs.store import Store
from overtrain.studies.base import SingleRunStudy, Study


def test_every_study_and_every_kind_it_announced_resolves_to_itself():
    assert set(STUDIES.names()) >= {"overtraining", "random_features", "repeated_data", "hyperfit", "lora_dd"}
    for name in STUDIES.names():
        study = STUDIES.get(name)
        assert isinstance(study, Study) and study.name == name and study.help
        assert RUN_KINDS.get(study.kind).name == study.kind
        if isinstance(study, SingleRunStudy):
            assert RUN_KINDS.get(name).name == name
    for name in RUN_KINDS.names():  # an announced kind that no study registers would raise here
        assert RUN_KINDS.get(name).name == name


def test_every_study_has_a_cli_command_and_a_default_preset(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in STUDIES.names():
        study = STUDIES.get(name)
        assert study.command in out
        assert isinstance(study.load_config(), study.config_cls)  # configs/<name>/<first preset>.yaml loads


def test_a_study_package_is_its_python_api():
    from overtrain.studies import overtraining
    from overtrain.studies.overtraining import plan, report  # submodules are never shadowed by the API

    study = STUDIES.get("overtraining")
    cfg = overtraining.load_config(preset="demo")
    assert overtraining.run == study.run and overtraining.analysis_id(cfg) == study.analysis_id(cfg)
    assert callable(plan.work) and callable(report.report)
    with pytest.raises(AttributeError):
        getattr(overtraining, "no_such_thing")  # noqa: B009 (an attribute lookup is the point)


def test_a_lazy_entry_must_register_what_it_announces():
    reg = Registry("thing")
    reg.register("json", "json")  # importing json registers nothing
    with pytest.raises(ValueError, match="did not register the thing 'json'"):
        reg.get("json")


def test_code_digest_follows_the_source(tmp_path, monkeypatch):
    pkg = tmp_path / "digest_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "claims.py").write_text("THRESHOLD = 0.8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_digest("digest_pkg.claims")
    assert before == code_digest("digest_pkg.claims") and len(before) == 12
    (pkg / "claims.py").write_text("THRESHOLD = 0.9\n")
    assert code_digest("digest_pkg.claims") != before
    assert code_digest("digest_pkg") != code_digest("digest_pkg.claims")  # a package counts every module
    sys.modules.pop("digest_pkg", None)


class _Cfg(BaseConfig):
    n: int = 1


def test_a_versioned_kind_changes_the_run_id_and_redo_runs_again(home, monkeypatch, capsys):
    calls = []

    def body(cfg, run):
        calls.append(cfg.n)
        run.log_eval({"record": "claim", "claim": "x's claim", "verdict": "PASS"})

    plain = RunKind("counted", _Cfg, body)
    versioned = RunKind("counted", _Cfg, body, version=lambda: "v2")
    cfg = _Cfg()
    assert plain.run_id(cfg) == config_hash(cfg) != versioned.run_id(cfg)
    monkeypatch.setitem(RUN_KINDS._entries, "counted", versioned)
    store = Store()
    first = store.execute("counted", cfg)
    assert not first.skipped and store.execute("counted", cfg).skipped and calls == [1]
    assert store.manifest("counted", first.run_id)["version"] == "v2"
    with pytest.raises(SystemExit) as exc:
        main(["redo", first.run_id[:6]])
    assert exc.value.code in (0, None) and calls == [1, 1]
    assert "redone" in capsys.readouterr().out
    assert store.manifest("counted", first.run_id)["redo_reason"] == "requested"
    # values travel as parameters, never inside the SQL text
    with Reader(store) as reader:
        rows = reader.rows("select claim from evals where claim = ?", ["x's claim"])
        assert rows == [{"claim": "x's claim"}] and reader.evals(first.run_id, record="claim")
        assert reader.latest("counted")["run_id"] == first.run_id and reader.latest("nothing") is None
