"""Configs: pydantic v2 models loaded from YAML with dotted command-line overrides.

Order of precedence (lowest first): the class defaults, the YAML file, then ``key.sub=value`` overrides.
Every config forbids unknown keys, documents each field with an attribute docstring, and turns any
validation failure into a `ConfigError` that names the field of each problem (one line per problem).

A config's *identity* (what its run id hashes) excludes fields marked ``identity=False`` (devices,
progress bars, paths): rerunning on another device resumes the same run.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
)

from overtrain.errors import ConfigError, UnknownNameError

C = TypeVar("C", bound="BaseConfig")

SCHEMA_VERSION = 1

INT_LIMIT = 2**63
"""Integers in configs must lie in [-2**63, 2**63): seeds and sizes reach torch and numpy as int64."""

FLOAT_LIMIT = 3.4028234663852886e38
"""Largest float magnitude in configs (float32's): rates and scales end up in float32 tensors."""


def _unrepresentable(value: Any) -> str | None:
    """Why `value` (a validated field value) cannot reach the numerics intact, or None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, BaseModel)):
        return None
    if isinstance(value, int):
        return None if -INT_LIMIT <= value < INT_LIMIT else "integer out of range (must fit in 64 bits)"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "must be a finite number"
        return None if abs(value) <= FLOAT_LIMIT else "number out of range (magnitude above 3.4e38)"
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return next((p for p in map(_unrepresentable, value) if p is not None), None)
    return None


class BaseConfig(BaseModel):
    """Base of every config: unknown keys are errors; fields are documented by attribute docstrings;
    numbers must be representable (finite, 64-bit integers, float32 range), so that a huge or non-finite
    value is a config error rather than a crash or a silent NaN deep inside a run."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )

    @field_validator("*", mode="after")
    @classmethod
    def _representable(cls, value: Any) -> Any:
        problem = _unrepresentable(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def NotInId(default: Any = ..., **kwargs: Any) -> Any:
    """A `Field` that does not enter the run id (device, progress, paths)."""
    return Field(default, json_schema_extra={"identity": False}, **kwargs)


def InIdWhenSet(**kwargs: Any) -> Any:
    """An optional `Field` (default None) that enters the run id only when set: adding such a field to a
    config leaves the ids of existing runs unchanged."""
    return Field(None, json_schema_extra={"identity": "when_set"}, **kwargs)


def _unique_seeds(value: list[int]) -> list[int]:
    if not value or len(set(value)) != len(value):
        raise ValueError("give at least one seed, each once")
    return value


Seeds = Annotated[list[int], AfterValidator(_unique_seeds)]
"""A list of seeds: at least one, none repeated (each seed is one independent replicate)."""


# --- token counts -------------------------------------------------------------------------------------

_SUFFIX = {"k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(value: Any) -> Any:
    """Accept ``2000000``, ``2e6``, ``"2e6"``, ``"2M"`` or ``"1.5k"`` as an integer count."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        scale = 1
        if text and text[-1] in _SUFFIX:
            scale, text = _SUFFIX[text[-1]], text[:-1]
        try:  # decimal arithmetic: "67.1M" is 67100000, not 67099999.99999999
            exact = decimal.Decimal(text) * scale
        except decimal.InvalidOperation:
            return value  # pydantic reports it as not an integer
        return int(exact) if exact.is_finite() and exact == exact.to_integral_value() else float(exact)
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return value
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(parse_count), Field(gt=0)]
"""A positive integer that may be written ``2e6`` or ``2M`` (tokens, steps, sequences)."""


# --- YAML ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``2e6`` and ``1e-3`` as floats (YAML 1.1 wants ``2.0e+6``) and refuses a key
    given twice in one mapping (plain YAML keeps the last value silently, so a config could run with a
    setting its author did not mean; merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML: {problem}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, unreadable file or non-mapping is a `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --- overrides -----------------------------------------------------------------------------------------


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each ``a.b.c=value`` applied; values are parsed as YAML."""
    out = json.loads(json.dumps(data, default=str)) if data else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        value = parse_yaml(raw, f"override {key}") if raw.strip() else None
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {key}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


# --- building and errors -------------------------------------------------------------------------------


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``train.tokens.0: Input should be greater than 0 (got -5)``.

    Args:
        exc: the pydantic error.
        prefix: put before each key path (``settings.`` for a config nested in another one's field).
    """
    problems = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            msg = "unknown key"
        elif error["type"] == "missing":
            msg = "missing required key"
        elif "input" in error and not isinstance(error["input"], (dict, list)):
            shown = repr(error["input"])
            msg = f"{msg} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        problems.append(f"{where}: {msg}" if where else msg)
    return problems


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Every problem on one line, joined by ``; `` (for a message nested inside another error)."""
    return "; ".join(validation_problems(exc, prefix))


def validate(cls: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        # every problem, not just the first: a user fixing a config sees all of them in one go
        raise ConfigError(source, problems=validation_problems(exc)) from None


def build_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> C:
    """Defaults <- `base` <- YAML file <- overrides, validated into `cls`."""
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        data = _deep_merge(data, load_yaml(path))
        source = str(path)
    overrides = list(overrides)
    data = apply_overrides(data, overrides)
    data = upgrade(data)
    return validate(cls, data, source if not overrides else f"{source} with overrides")


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older config to `SCHEMA_VERSION` (the hook where renamed keys get mapped)."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {version} is newer than this overtrain understands ({SCHEMA_VERSION})"
        )
    return data


# --- identity ------------------------------------------------------------------------------------------


def identity(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain data, without fields marked ``identity=False``, recursively."""
    out: dict[str, Any] = {}
    for name, field in type(cfg).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("identity") is False:
            continue
        if isinstance(extra, dict) and extra.get("identity") == "when_set" and getattr(cfg, name) is None:
            continue
        out[name] = _identity_value(getattr(cfg, name))
    return out


def _identity_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return identity(value)
    if isinstance(value, dict):
        return {str(k): _identity_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_identity_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_hash(cfg: BaseModel, length: int = 12, *, version: str | None = None) -> str:
    """Short sha256 of the canonical JSON of the config's identity: the run id.

    `version` (a run kind's code version, e.g. the digest of the code that decides a study's verdicts)
    enters the hash when given, so a run of new code is a new run; without it the id is the config's
    alone, as it always was."""
    text = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"), default=str)
    if version is not None:
        text += "\nversion:" + version
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def to_plain(cfg: BaseModel) -> dict[str, Any]:
    """Every field, JSON-compatible (for `config.yaml`)."""
    return cfg.model_dump(mode="json", serialize_as_any=True)


# --- registered components -----------------------------------------------------------------------------


def Registered(registry: Any, default_name: str | None = None) -> Any:
    """An annotation for a config chosen by name from `registry`: ``{name: hmm, states: 32}``.

    The registry maps names to config classes that have a ``name`` field; a bare string is the name
    with every other field at its default.
    """

    def choose(value: Any) -> Any:
        if isinstance(value, BaseConfig):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping with a 'name' key or a {registry.kind} name")
        name = value.get("name", default_name)
        if name is None:
            raise ValueError(f"missing 'name': which {registry.kind}? choose from {registry.names()}")
        try:
            cls = registry.get(str(name))
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        return cls.model_validate({**value, "name": name})

    return Annotated[SerializeAsAny[BaseConfig], BeforeValidator(choose)]
