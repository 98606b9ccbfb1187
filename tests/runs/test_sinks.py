"""The optional metrics mirrors (TensorBoard, wandb): records reach them live, keyed by metric name with
tokens_seen as the step, one event dir per run; a missing or failing mirror never breaks a run."""

from __future__ import annotations

import sys
import types
import warnings

import pytest

from overtrain.config import BaseConfig, Count, config_hash
from overtrain.runs import sinks
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.kinds import RunKind
from overtrain.runs.store import Store


class MirrorConfig(BaseConfig):
    n: Count = 3
    """Steps."""


def _run(cfg: MirrorConfig, run) -> None:
    for step in range(1, cfg.n + 1):
        run.log_metrics({"step": step, "tokens_seen": 8 * step, "train/loss": 1.0 / step, "line": "main"})
    run.log_metrics({"step": cfg.n, "tokens_seen": 8 * cfg.n, "val/loss": 0.5, "val/ppl": float("nan")})


KIND = RunKind("mirror", MirrorConfig, _run)


class FakeWriter:
    """Stands in for torch's SummaryWriter: records what a run sends it."""

    made: list[FakeWriter] = []

    def __init__(self, logdir: str) -> None:
        self.logdir, self.scalars, self.flushes, self.closed = logdir, [], 0, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch, tmp_path):
    """``torch.utils.tensorboard`` replaced by a module whose SummaryWriter is `FakeWriter`."""
    FakeWriter.made = []
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    monkeypatch.setenv(sinks.TENSORBOARD_ENV, str(tmp_path / "tb"))
    monkeypatch.setattr(sinks, "_warned", set())
    return tmp_path / "tb"


def test_tensorboard_gets_every_metric_live_keyed_by_name(home, fake_tensorboard):
    store = Store()
    out = store.execute(KIND, MirrorConfig())
    (writer,) = FakeWriter.made
    assert writer.logdir == str(fake_tensorboard / "mirror" / out.run_id)  # one event dir per run
    assert writer.scalars == [
        ("train/loss/main", 1.0, 8),  # a string tag (the line) is a suffix: one curve per line
        ("train/loss/main", 0.5, 16),
        ("train/loss/main", pytest.approx(1 / 3), 24),
        ("val/loss", 0.5, 24),  # NaN (null in metrics.jsonl) is left out
    ]
    assert writer.flushes == 4 and writer.closed  # flushed per record (live), closed with the run
    assert len(read_jsonl(out.dir / "metrics.jsonl")) == 4
    assert out.run_id == config_hash(MirrorConfig())  # the mirror is not part of the run id


def test_a_failing_writer_warns_once_and_the_run_succeeds(home, fake_tensorboard, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(FakeWriter, "add_scalar", broken)
    store = Store()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = store.execute(KIND, MirrorConfig(n=2))
        second = store.execute(KIND, MirrorConfig(n=3))
    mirror_warnings = [w for w in caught if issubclass(w.category, sinks.MetricsSinkWarning)]
    assert len(mirror_warnings) == 1 and "disk full" in str(mirror_warnings[0].message)
    assert first.status == second.status == "success"
    assert len(read_jsonl(second.dir / "metrics.jsonl")) == 4


def test_without_tensorboard_installed_the_run_goes_on_with_one_warning(home, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setenv(sinks.TENSORBOARD_ENV, str(tmp_path / "tb"))
    monkeypatch.setattr(sinks, "_warned", set())
    with pytest.warns(sinks.MetricsSinkWarning, match="tensorboard mirror of the metrics is off"):
        out = Store().execute(KIND, MirrorConfig())
    assert out.status == "success" and not (tmp_path / "tb").exists()


def test_no_environment_no_mirror(home, monkeypatch):
    monkeypatch.delenv(sinks.TENSORBOARD_ENV, raising=False)
    monkeypatch.delenv(sinks.WANDB_ENV, raising=False)
    assert sinks.open_mirror("mirror", "abc").sinks == []


def test_wandb_without_the_package_is_a_one_line_cli_error(capsys, home, monkeypatch):
    from overtrain.cli.main import main

    monkeypatch.setenv(sinks.WANDB_ENV, "my-project")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(SystemExit) as info:
        main(["ls", "kinds"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.splitlines() == [
        "overtrain: error: OVERTRAIN_WANDB is set but wandb is not installed: pip install wandb (or unset it)"
    ]


def test_wandb_gets_scalars_against_tokens_seen(home, monkeypatch):
    logged, inits = [], []

    class FakeWandbRun:
        def define_metric(self, name, step_metric=None):
            assert (name, step_metric) == ("*", "tokens_seen")

        def log(self, values):
            logged.append(values)

        def finish(self):
            logged.append("finished")

    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or FakeWandbRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv(sinks.TENSORBOARD_ENV, raising=False)
    monkeypatch.setenv(sinks.WANDB_ENV, "my-project")
    out = Store().execute(KIND, MirrorConfig(n=1))
    assert inits[0]["project"] == "my-project" and inits[0]["name"] == f"mirror/{out.run_id}"
    assert inits[0]["config"] == {"n": 1}
    assert logged == [
        {"train/loss/main": 1.0, "tokens_seen": 8},
        {"val/loss": 0.5, "tokens_seen": 8},
        "finished",
    ]


def test_tensorboard_event_file_reads_back(home, monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(sinks.TENSORBOARD_ENV, str(tmp_path / "tb"))
    out = Store().execute(KIND, MirrorConfig())
    events = EventAccumulator(str(tmp_path / "tb" / "mirror" / out.run_id))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss/main")] == [
        (8, 1.0),
        (16, 0.5),
        (24, pytest.approx(1 / 3)),
    ]
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(24, 0.5)]


def test_cli_tensorboard_flag_mirrors_a_pretrain_run(capsys, home, fake_tensorboard, tmp_path, tiny_pretrain):
    import yaml

    from overtrain.cli.main import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain))
    with pytest.raises(SystemExit) as info:  # the flag wins over the environment the fixture set
        main(["--tensorboard", str(tmp_path / "flag"), "pretrain", "--config", str(config)])
    assert info.value.code == 0
    (writer,) = FakeWriter.made
    assert writer.logdir.startswith(str(tmp_path / "flag" / "pretrain"))
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"train/loss/main", "val/loss/main"} <= tags
    assert all(isinstance(step, int) for _, _, step in writer.scalars)
