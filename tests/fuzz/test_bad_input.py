"""Bad input, fuzzed with hypothesis: every kind gives one line (per config problem) on stderr, exit 2, no traceback, no run done.

`KINDS` is the table of bad-input kinds (configs of every run kind, overrides, config files, sweep files,
study overrides, CLI arguments, model directories). Each kind is a hypothesis strategy that writes its
files and returns the command line; every drawn case goes through the real CLI entry point in-process
and must end with exit code 2 and one stderr line ``overtrain: error: ...`` (a config with several problems:
that headline and one indented line per problem), with no run newly
marked ``success`` in the store. `test_enough_kinds_are_covered` keeps the count visible (docs/hardening.md).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overtrain.cli.main import main

EXAMPLES = 3
"""Cases drawn per kind (the suite stays fast: ~80 kinds x 3 cases of in-process validation)."""

TINY = {
    "seed": 0,
    "data": {"name": "hmm", "seed": 0, "states": 4, "vocab_size": 16, "floor_sequences": 64},
    "model": {"preset": "llama-nano"},
    "train": {
        "tokens": [2560, 5120],
        "batch_size": 8,
        "seq_len": 32,
        "warmup_steps": 3,
        "log_every": 2,
        "lr": 1e-2,
    },
    "eval": {"batches": 2},
    "checkpoint": {"resume_every": 4},
}
TASK = {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64}

PRETRAIN_KEYS = {
    "schema_version",
    "seed",
    "data",
    "model",
    "train",
    "eval",
    "checkpoint",
    "monitor",
    "dtype",
    "device",
    "compile",
}


@dataclass(frozen=True)
class World:
    """A store with one finished tiny pre-training run (the parent of finetune/probe cases)."""

    home: Path
    parent: str
    damaged_parent: str
    tiny_yaml: Path
    model_dir: Path


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: `build(draw, world, work)` writes files into `work` and returns argv."""

    name: str
    group: str
    build: Callable[..., list[str]]


# --- strategies ----------------------------------------------------------------------------------------

_KEY_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="=.")
unknown_key = st.text(_KEY_CHARS, min_size=1, max_size=12).filter(lambda k: k.strip() not in PRETRAIN_KEYS)
_YAML_WORDS = {"inf", "nan", "infinity", "true", "false", "yes", "no", "on", "off", "null", "e", "y", "n"}
words = st.text(string.ascii_letters, min_size=1, max_size=10).filter(lambda s: s.lower() not in _YAML_WORDS)
odd_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20
)
file_names = odd_text.filter(lambda s: "/" not in s and s not in (".", ".."))
not_numbers = st.one_of(
    words,
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(words, st.integers(), min_size=1, max_size=2),
)
huge_ints = st.one_of(
    st.integers(min_value=2**63, max_value=10**40), st.integers(min_value=-(10**40), max_value=-(2**63) - 1)
)
huge_floats = st.floats(min_value=3.5e38, max_value=1e308)
non_finite = st.sampled_from([".inf", "-.inf", ".nan", ".NaN", "+.inf"])
one_of = st.sampled_from


def ov(key: str, value) -> str:
    """An override whose value keeps its type (JSON is YAML flow syntax)."""
    return f"{key}={json.dumps(value)}"


def write(work: Path, name: str, text: str | bytes) -> Path:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pretrain(world: World, *overrides: str) -> list[str]:
    """Validate only (--dry-run): a case that wrongly passed would exit 0 and fail the test, not train."""
    return ["pretrain", "--config", str(world.tiny_yaml), *overrides, "--dry-run"]


def pretrain_file(work: Path, data) -> list[str]:
    return ["pretrain", "--config", str(write(work, "c.yaml", data)), "--dry-run"]


def sweep_file(work: Path, data) -> list[str]:
    return ["sweep", str(write(work, "sweep.yaml", yaml.safe_dump(data, allow_unicode=True))), "--dry-run"]


def finetune(world: World, *overrides: str, dry: bool = True, parent: str | None = None) -> list[str]:
    """A tiny fine-tuning of the world's parent; `dry=False` for errors found only when the run starts."""
    base = [
        ov("parent", parent or world.parent),
        "checkpoint=budget_5120",
        ov("data", TASK),
        "train.steps=1",
        "train.batch_size=2",
        "eval_batches=1",
    ]
    return ["finetune", *base, *overrides, *(["--dry-run"] if dry else [])]


def probe(world: World, *overrides: str) -> list[str]:
    return ["probe", ov("parent", world.parent), "checkpoint=budget_5120", *overrides, "--dry-run"]


def empty_dir(work: Path) -> Path:
    (work / "empty").mkdir()
    return work / "empty"


def model_dir(work: Path, world: World, damage: str, draw) -> Path:
    """A copy of a real checkpoint directory, damaged as `damage` says (checksums.json removed unless the
    case is about it, so that the damage reaches the reader it targets)."""
    d = work / draw(one_of(["model", "ckpt step 1", "modèle-ü", "a b\tc"]))
    shutil.copytree(world.model_dir, d)
    weights, config = d / "model.safetensors", d / "config.json"
    if damage != "flipped":
        (d / "checksums.json").unlink()
    if damage == "pickle":
        weights.unlink()
        write(d, draw(one_of(["pytorch_model.bin", "model.pt", "weights.bin"])), draw(st.binary(max_size=64)))
    elif damage == "garbage":
        weights.write_bytes(draw(st.binary(max_size=256)))
    elif damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: draw(st.integers(0, len(data) - 1))])
    elif damage == "flipped":  # checksums.json kept: one changed byte anywhere is caught by the hash
        data = bytearray(weights.read_bytes())
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        weights.write_bytes(bytes(data))
    elif damage == "missing tensor":  # transformers alone would re-initialise it at random and go on
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        tensors.pop(draw(one_of(sorted(tensors))))
        save_file(tensors, str(weights), metadata={"format": "pt"})
    elif damage == "no config.json":
        config.unlink()
    elif damage == "config.json not JSON":
        write(d, "config.json", draw(one_of(["{not json", "", "[1, 2", "\x00\x01"])))
    elif damage == "unknown model_type":
        cfg = json.loads(config.read_text())
        write(d, "config.json", json.dumps({**cfg, "model_type": draw(words) + "_x"}))
    elif damage == "shapes unlike config.json":
        cfg = json.loads(config.read_text())
        write(d, "config.json", json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * draw(one_of([2, 4]))}))
    return d


# --- the kinds -----------------------------------------------------------------------------------------

INT_FIELDS = [
    "train.batch_size",
    "train.seq_len",
    "train.log_every",
    "train.warmup_steps",
    "eval.batches",
    "checkpoint.resume_every",
    "seed",
    "data.states",
    "data.vocab_size",
]
FLOAT_FIELDS = [
    "train.lr",
    "train.weight_decay",
    "train.eps",
    "train.min_lr_ratio",
    "train.decay_fraction",
    "train.grad_clip",
    "data.transition_alpha",
]
POSITIVE_INTS = [
    "train.batch_size",
    "train.log_every",
    "eval.batches",
    "checkpoint.resume_every",
    "data.floor_sequences",
    "checkpoint.every",
    "eval.every",
]
SECTIONS = ["train", "eval", "checkpoint", "data", "model"]

KINDS: list[Kind] = []


def add(name: str, group: str, build: Callable[..., list[str]]) -> None:
    """Register a kind: `build(draw, world, work_dir) -> argv`."""
    KINDS.append(Kind(name, group, build))


# pretrain configs through overrides
add("unknown top-level key", "config", lambda d, w, p: pretrain(w, ov(d(unknown_key), 1)))
add(
    "unknown nested key",
    "config",
    lambda d, w, p: pretrain(w, ov(f"{d(one_of(SECTIONS))}.{d(unknown_key)}z", 1)),
)
add("int field: wrong type", "config", lambda d, w, p: pretrain(w, ov(d(one_of(INT_FIELDS)), d(not_numbers))))
add(
    "float field: wrong type",
    "config",
    lambda d, w, p: pretrain(w, ov(d(one_of(FLOAT_FIELDS)), d(not_numbers))),
)
add(
    "int field: fractional number",
    "config",
    lambda d, w, p: pretrain(
        w, ov(d(one_of(INT_FIELDS)), d(st.floats(0.1, 1e6).filter(lambda x: x != int(x))))
    ),
)
add(
    "section given a scalar",
    "config",
    lambda d, w, p: pretrain(w, ov(d(one_of([*SECTIONS, "monitor"])), d(st.one_of(st.integers(), words)))),
)
add(
    "list or mapping field given another type",
    "config",
    lambda d, w, p: pretrain(
        w, ov(d(one_of(["train.betas", "eval.extra"])), d(st.one_of(st.integers(), st.just({"a": 1}))))
    ),
)
add(
    "positive int <= 0",
    "config",
    lambda d, w, p: pretrain(w, ov(d(one_of(POSITIVE_INTS)), d(st.integers(-(10**6), 0)))),
)
add(
    "seq_len below 2 / negative warmup",
    "config",
    lambda d, w, p: pretrain(
        w,
        d(
            st.one_of(
                st.integers(-100, 1).map(lambda v: ov("train.seq_len", v)),
                st.integers(-100, -1).map(lambda v: ov("train.warmup_steps", v)),
            )
        ),
    ),
)
add(
    "rate or scale <= 0",
    "config",
    lambda d, w, p: pretrain(
        w, ov(d(one_of(["train.lr", "train.eps", "data.transition_alpha"])), d(st.floats(-1e6, 0)))
    ),
)
add(
    "fraction outside its interval",
    "config",
    lambda d, w, p: pretrain(
        w,
        ov(
            d(one_of(["train.min_lr_ratio", "train.decay_fraction"])),
            d(st.one_of(st.floats(1.001, 1e6), st.floats(-1e6, -0.001))),
        ),
    ),
)
add(
    "betas outside [0, 1)",
    "config",
    lambda d, w, p: pretrain(
        w, ov("train.betas", [d(st.floats(0, 0.99)), d(st.one_of(st.floats(1, 100), st.floats(-100, -0.01)))])
    ),
)
add(
    "token budget <= 0",
    "config",
    lambda d, w, p: pretrain(w, ov("train.tokens", [d(st.integers(-(10**9), 0))])),
)
add(
    "token budget unparseable",
    "config",
    lambda d, w, p: pretrain(
        w, ov("train.tokens", [d(one_of(["12xM", "--5", "1..2k", "M", "2e", "5 M B"]))])
    ),
)
add(
    "token budgets colliding",
    "config",
    lambda d, w, p: pretrain(w, ov("train.tokens", [2560, 2560 + d(st.integers(1, 60))])),
)
add(
    "token budgets empty",
    "config",
    lambda d, w, p: pretrain(w, d(one_of(["train.tokens=[]", "train.tokens=null"]))),
)
add(
    "integer beyond 64 bits",
    "config",
    lambda d, w, p: pretrain(
        w, ov(d(one_of(["seed", "data.seed", "train.batch_size", "eval.batches"])), d(huge_ints))
    ),
)
add(
    "float beyond float32 range",
    "config",
    lambda d, w, p: pretrain(w, ov(d(one_of(FLOAT_FIELDS)), d(huge_floats))),
)
add("non-finite float", "config", lambda d, w, p: pretrain(w, f"{d(one_of(FLOAT_FIELDS))}={d(non_finite)}"))
add(
    "invalid choice (schedule, dtype)",
    "config",
    lambda d, w, p: pretrain(
        w,
        ov(
            d(one_of(["train.schedule", "dtype"])),
            d(words.filter(lambda s: s not in {"wsd", "cosine", "constant"})),
        ),
    ),
)
add(
    "invalid device",
    "config",
    lambda d, w, p: pretrain(
        w,
        ov(
            "device",
            d(
                st.one_of(
                    words.filter(lambda s: s not in {"cpu", "cuda", "mps", "auto"}),
                    one_of(["cuda:x", "cpu:0", ":", "cuda:-1"]),
                )
            ),
        ),
    ),
)
add(
    "schema_version newer than the code",
    "config",
    lambda d, w, p: pretrain(w, ov("schema_version", d(st.integers(2, 10**6)))),
)
add("unknown model preset", "config", lambda d, w, p: pretrain(w, ov("model.preset", d(odd_text))))
add(
    "model override: unknown field",
    "config",
    lambda d, w, p: pretrain(w, ov(f"model.overrides.{d(words)}_x", 1)),
)
add(
    "model override: wrong type",
    "config",
    lambda d, w, p: pretrain(
        w, ov(d(one_of(["model.overrides.hidden_size", "model.overrides.num_hidden_layers"])), d(words))
    ),
)
add(
    "model override: impossible shape",
    "config",
    lambda d, w, p: pretrain(
        w,
        d(
            st.one_of(
                st.integers(-64, -1).map(lambda v: ov("model.overrides.intermediate_size", v)),
                one_of([3, 5, 7]).map(lambda v: ov("model.overrides.num_attention_heads", v)),
            )
        ),
    ),
)
add("unknown dataset", "config", lambda d, w, p: pretrain(w, ov("data.name", d(odd_text))))
add(
    "dataset parameter out of range",
    "config",
    lambda d, w, p: pretrain(
        w,
        d(
            st.one_of(
                st.integers(-5, 0).map(lambda v: ov("data.states", v)),
                st.integers(-5, 1).map(lambda v: ov("data.vocab_size", v)),
                st.integers(-5, -1).map(lambda v: ov("data.seed", v)),
            )
        ),
    ),
)
add(
    "eval.extra: reserved or odd name",
    "config",
    lambda d, w, p: pretrain(w, ov("eval.extra", {d(one_of(["train", "val", "a b", "x/y", "ü-"])): "hmm"})),
)
add("monitor: unknown key", "config", lambda d, w, p: pretrain(w, ov(f"monitor.{d(words)}_q", 1)))

# override syntax
add(
    "override without '='",
    "override",
    lambda d, w, p: pretrain(w, d(odd_text.filter(lambda s: "=" not in s and not s.startswith("-")))),
)
add(
    "override with an empty key part",
    "override",
    lambda d, w, p: pretrain(w, d(one_of(["=1", "a..b=1", ".a=1", "train.=1", " =1", "train..lr=1"]))),
)
add(
    "override through a value",
    "override",
    lambda d, w, p: pretrain(w, f"{d(one_of(['train.lr', 'seed', 'train.tokens']))}.{d(words)}=1"),
)
add(
    "override value is invalid YAML",
    "override",
    lambda d, w, p: pretrain(w, f"train.lr={d(one_of(['[1,', '{a', chr(39) + 'x', '@x', '`x', 'a: b: c']))}"),
)

# config files
add(
    "config file missing (odd path)",
    "config-file",
    lambda d, w, p: ["pretrain", "--config", str(p / f"{d(file_names)}.yaml"), "--dry-run"],
)
add(
    "config file not a mapping",
    "config-file",
    lambda d, w, p: pretrain_file(
        p, yaml.safe_dump(d(st.one_of(st.lists(st.integers(), min_size=1), st.integers(), words)))
    ),
)
add(
    "config file invalid YAML",
    "config-file",
    lambda d, w, p: pretrain_file(
        p, d(one_of(["train: {tokens: [1,\n", "a: b: c\n", "- a\nb: 1\n", "\t- x\n", "key: 'open\n"]))
    ),
)
add(
    "config file not UTF-8",
    "config-file",
    lambda d, w, p: pretrain_file(
        p, b"seed: 1\n" + d(one_of([b"\xff\xfe", b"\xc3\x28", b"\x80abc", b"\xed\xa0\x80"]))
    ),
)
add(
    "config path is a directory", "config-file", lambda d, w, p: ["pretrain", "--config", str(p), "--dry-run"]
)
add(
    "config file: wrong type inside",
    "config-file",
    lambda d, w, p: pretrain_file(
        p, yaml.safe_dump({**TINY, "train": {**TINY["train"], "batch_size": d(not_numbers)}})
    ),
)

# finetune
add("finetune: parent is not a run id", "finetune", lambda d, w, p: finetune(w, parent=d(odd_text)))
add(
    "finetune: missing required key",
    "finetune",
    lambda d, w, p: [
        "finetune",
        ov("parent", w.parent),
        d(one_of(["checkpoint=budget_5120", ov("data", TASK)])),
        "--dry-run",
    ],
)
add(
    "finetune: checkpoint is a path",
    "finetune",
    lambda d, w, p: finetune(
        w, ov("checkpoint", d(one_of(["../../etc", "a/b", "..", ".hidden", "/abs", "x/../../y"])))
    ),
)
add("finetune: unknown method", "finetune", lambda d, w, p: finetune(w, ov("method", d(words) + "_m")))
add(
    "finetune: method setting out of range",
    "finetune",
    lambda d, w, p: finetune(
        w, ov("method", {"name": "lora", d(one_of(["rank", "alpha"])): d(st.integers(-10, 0))})
    ),
)
add(
    "finetune: method unknown setting",
    "finetune",
    lambda d, w, p: finetune(w, ov("method", {"name": d(one_of(["lora", "full"])), f"{d(words)}_k": 1})),
)
add(
    "finetune: training setting out of range",
    "finetune",
    lambda d, w, p: finetune(
        w, ov(d(one_of(["train.steps", "train.batch_size", "train.lr"])), d(st.integers(-10, 0)))
    ),
)
add(
    "finetune: parent run not in the store",
    "finetune",
    lambda d, w, p: finetune(
        w,
        dry=False,
        parent=d(
            st.text("0123456789abcdef", min_size=12, max_size=12).filter(
                lambda s: s not in (w.parent, w.damaged_parent)
            )
        ),
    ),
)
add(
    "finetune: checkpoint missing in the parent",
    "finetune",
    lambda d, w, p: finetune(w, f"checkpoint=budget_{d(st.integers(1, 10**9))}9", dry=False),
)
add(
    "finetune: parent checkpoint damaged",
    "finetune",
    lambda d, w, p: finetune(w, dry=False, parent=w.damaged_parent),
)

# probe
add("probe: unknown probe", "probe", lambda d, w, p: probe(w, f"probe={d(words)}_p"))
add("probe: unknown setting", "probe", lambda d, w, p: probe(w, ov(f"settings.{d(words)}_s", 1)))
add(
    "probe: setting of wrong type or range",
    "probe",
    lambda d, w, p: probe(
        w,
        d(
            st.one_of(
                st.just(ov("settings.draws", 0)),
                words.map(lambda v: ov("settings.gammas", v)),
                st.integers(-5, 1).map(lambda v: ov("eval_seq_len", v)),
            )
        ),
    ),
)

# sweep files
add("sweep file missing", "sweep", lambda d, w, p: ["sweep", str(p / f"{d(file_names)}.yaml")])
add("sweep: unknown run kind", "sweep", lambda d, w, p: sweep_file(p, {"kind": d(words) + "_kind"}))
add("sweep: kind missing", "sweep", lambda d, w, p: sweep_file(p, {"base": {}, "axes": {"seed": [1]}}))
add("sweep: unknown key", "sweep", lambda d, w, p: sweep_file(p, {"kind": "pretrain", d(words) + "_x": 1}))
add(
    "sweep: axis values not a non-empty list",
    "sweep",
    lambda d, w, p: sweep_file(
        p,
        {
            "kind": "pretrain",
            "base": TINY,
            "axes": {"train.lr": d(st.one_of(st.just([]), st.floats(0.1, 1)))},
        },
    ),
)
add(
    "sweep: zip lists of unequal length",
    "sweep",
    lambda d, w, p: sweep_file(
        p,
        {
            "kind": "pretrain",
            "base": TINY,
            "zip": {"train.lr": [0.1] * d(st.integers(1, 3)), "seed": [1] * d(st.integers(4, 6))},
        },
    ),
)
add(
    "sweep: base file missing",
    "sweep",
    lambda d, w, p: sweep_file(p, {"kind": "pretrain", "base": d(file_names) + ".yaml"}),
)
add(
    "sweep: base of the wrong type",
    "sweep",
    lambda d, w, p: sweep_file(
        p, {"kind": "pretrain", "base": d(st.one_of(st.integers(), st.lists(st.integers(), min_size=1)))}
    ),
)
add(
    "sweep: a combination is invalid",
    "sweep",
    lambda d, w, p: sweep_file(
        p, {"kind": "pretrain", "base": TINY, "axes": {"train.batch_size": [8, d(st.integers(-100, 0))]}}
    ),
)
add(
    "sweep: seeds invalid",
    "sweep",
    lambda d, w, p: sweep_file(
        p,
        {
            "kind": "pretrain",
            "base": TINY,
            "seeds": d(
                st.one_of(
                    st.just([]),
                    st.lists(words, min_size=1, max_size=2),
                    st.lists(huge_ints, min_size=1, max_size=1),
                )
            ),
        },
    ),
)
add(
    "sweep: axis key malformed",
    "sweep",
    lambda d, w, p: sweep_file(
        p, {"kind": "pretrain", "base": TINY, "axes": {d(one_of(["a..b", "train.lr.x", ".x", "seed."])): [1]}}
    ),
)
add(
    "sweep: file not a mapping",
    "sweep",
    lambda d, w, p: [
        "sweep",
        str(write(p, "s.yaml", yaml.safe_dump(d(st.lists(st.integers(), min_size=1))))),
    ],
)

# studies
add("study: unknown preset", "study", lambda d, w, p: ["overtraining", "--preset", d(odd_text), "--dry-run"])
add(
    "study: bad override",
    "study",
    lambda d, w, p: [
        "overtraining",
        "--preset",
        "demo",
        d(
            st.one_of(
                unknown_key.map(lambda k: ov(k, 1)), one_of(["seeds=[]", "seeds=[1, 1]", "bootstrap=5"])
            )
        ),
        "--dry-run",
    ],
)
add(
    "single-run study: bad override",
    "study",
    lambda d, w, p: [
        d(one_of(["random-features", "lora-dd", "head-tuning", "mlp-double-descent"])),
        ov(d(unknown_key) + "_u", 1),
        "--dry-run",
    ],
)

# command-line arguments
add("unknown command", "cli", lambda d, w, p: [d(words) + "_cmd"])
add(
    "unknown option",
    "cli",
    lambda d, w, p: [d(one_of(["pretrain", "sweep", "query", "ls", "report"])), f"--{d(words)}-zz"],
)
add(
    "missing required argument",
    "cli",
    lambda d, w, p: [d(one_of(["sweep", "audit", "query", "ls", "validate"]))],
)
add(
    "option value of the wrong type",
    "cli",
    lambda d, w, p: [
        "sweep",
        str(w.tiny_yaml),
        "--workers",
        d(st.one_of(words, st.integers(-5, 0).map(str))),
    ],
)
add(
    "unknown executor",
    "cli",
    lambda d, w, p: [
        "sweep",
        str(write(p, "s.yaml", yaml.safe_dump({"kind": "pretrain", "base": TINY}))),
        "--executor",
        d(words) + "_ex",
    ],
)
add(
    "query: invalid SQL",
    "cli",
    lambda d, w, p: [
        "query",
        d(one_of(["select nope from runs", "selec 1", "select * from nowhere", "select 1 +", "'"])),
    ],
)
add("query: unknown format", "cli", lambda d, w, p: ["query", "select 1", "--format", d(words) + "_f"])
add("ls: unknown listing", "cli", lambda d, w, p: ["ls", d(words) + "_l"])
add(
    "report: unknown study",
    "cli",
    lambda d, w, p: ["report", "--study", d(words) + "_s", "--out", str(p / "r")],
)
add("validate: path missing", "cli", lambda d, w, p: ["validate", str(p / d(file_names))])
add("data prepare: unknown source", "cli", lambda d, w, p: ["data", "prepare", d(words) + "_d"])

# model directories (audit reads any Hugging Face checkpoint directory)
for _damage in (
    "pickle",
    "garbage",
    "truncated",
    "flipped",
    "missing tensor",
    "no config.json",
    "config.json not JSON",
    "unknown model_type",
    "shapes unlike config.json",
):
    add(
        f"model dir: {_damage}",
        "model-dir",
        lambda d, w, p, damage=_damage: [
            "audit",
            str(model_dir(p, w, damage, d)),
            "--probes",
            "reference_loss",
        ],
    )
add(
    "model dir: missing or not a directory",
    "model-dir",
    lambda d, w, p: ["audit", str(d(one_of([p / "nope", write(p, "file.txt", "x"), p / "ü n i"])))],
)
add("model dir: empty directory", "model-dir", lambda d, w, p: ["audit", str(empty_dir(p))])
add(
    "audit: unknown probe or bad option",
    "model-dir",
    lambda d, w, p: [
        "audit",
        str(w.model_dir),
        *d(
            one_of(
                [
                    ["--probes", "nope"],
                    ["--dtype", "int8"],
                    ["--set", "seq_len=1"],
                    ["--set", "nope=1"],
                    ["--device", "tpu"],
                    ["--text", str(p / "missing.txt")],
                ]
            )
        ),
    ],
)


# --- the harness ---------------------------------------------------------------------------------------


def _successes(home: Path) -> set[str]:
    out = set()
    for manifest in (home / "runs").glob("*/*/manifest.json"):
        try:
            if json.loads(manifest.read_text()).get("status") == "success":
                out.add(str(manifest.parent))
        except (OSError, ValueError):
            pass
    return out


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    """The CLI in-process; stdout and stderr captured at the file-descriptor level, so that output a
    library writes straight to the real stderr (a logging handler made at import) counts too."""
    capfd.readouterr()
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    out = capfd.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def world():
    """OVERTRAIN_HOME with a finished tiny parent run, a copy of it with a damaged checkpoint, a model dir."""
    from overtrain.config import validate
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    root = Path(tempfile.mkdtemp(prefix="overtrain-fuzz-"))
    saved = os.environ.get("OVERTRAIN_HOME")
    os.environ["OVERTRAIN_HOME"] = str(root / "home")
    try:
        store = Store()
        pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, TINY))
        damaged = "d" * 12
        shutil.copytree(pre.dir, store.run_dir("pretrain", damaged))
        weights = store.run_dir("pretrain", damaged) / "ckpt" / "budget_5120" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        tiny = root / "tiny.yaml"
        tiny.write_text(yaml.safe_dump(TINY))
        yield World(root / "home", pre.run_id, damaged, tiny, pre.dir / "ckpt" / "budget_5120")
    finally:
        if saved is None:
            os.environ.pop("OVERTRAIN_HOME", None)
        else:
            os.environ["OVERTRAIN_HOME"] = saved
        shutil.rmtree(root, ignore_errors=True)


def test_enough_kinds_are_covered():
    names = [k.name for k in KINDS]
    assert len(set(names)) == len(names)
    groups = {k.group for k in KINDS}
    assert len(KINDS) >= 40
    assert groups >= {
        "config",
        "override",
        "config-file",
        "finetune",
        "probe",
        "sweep",
        "study",
        "cli",
        "model-dir",
    }
    print(f"bad-input kinds covered: {len(KINDS)} in {len(groups)} groups")


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
def test_bad_input_is_one_line_exit_2_and_marks_nothing_done(world, kind, data, capfd):
    before = _successes(world.home)
    work = Path(tempfile.mkdtemp(dir=world.home.parent))
    argv = kind.build(data.draw, world, work)
    code, _, err = run_cli(argv, capfd)
    lines = err.strip().splitlines()
    assert code == 2, f"{kind.name}: {argv!r} -> exit {code}: {err.strip()[-500:]}"
    # one line, or a config's several problems: a headline and one indented line each (ConfigError.lines)
    assert lines[0].startswith("overtrain: error: "), f"{kind.name}: {argv!r} -> {err!r}"
    assert len(lines) == 1 or all(line.startswith("  ") for line in lines[1:]), f"{kind.name}: {err!r}"
    assert "Traceback" not in err
    assert _successes(world.home) == before, f"{kind.name}: a run was marked done"
    shutil.rmtree(work, ignore_errors=True)
