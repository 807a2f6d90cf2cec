"""Typed access to params.yaml: one module per section, and `load_params`, which fails loudly.

The bottom layer of mmfuse: it imports nothing of mmfuse but `errors`, so every package
can read its own section without pulling in another's code. Every section forbids unknown
keys, the top level included: a misspelt `preproces:` is an error naming it and the known
sections, never a silent run on the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from mmfuse.errors import ConfigError
from mmfuse.params.base import Section
from mmfuse.params.data import DataParams
from mmfuse.params.evaluate import EvaluateParams
from mmfuse.params.monitor import MonitorParams
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.promote import PromoteParams
from mmfuse.params.serve import ServeParams
from mmfuse.params.train import TrainParams
from mmfuse.params.tune import TuneParams
from mmfuse.params.validate import ValidateParams

__all__ = ["PARAMS_FILE", "Params", "load_params", "load_serve_params"]

PARAMS_FILE = Path("params.yaml")
OMEGACONF_MISSING = "???"


class Params(Section):
    """The whole params.yaml: one typed section per stage or service."""

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    preprocess: PreprocessParams = PreprocessParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()
    tune: TuneParams = TuneParams()


def _find_value(node: Any, value: str, where: str = "") -> str | None:
    """Dotted key (list items as [i]) of the first occurrence of `value` in a params tree."""
    if node == value:
        return where
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found = _find_value(child, value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a params.yaml mapping at `loc` (the parent of an unknown key) may hold."""
    model: type[BaseModel] | None = Params
    for part in loc:
        if model is None:
            return []
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] != "extra_forbidden":
        return f"{where}: {error['msg']}"
    parent = tuple(error["loc"][:-1])
    kind = "section" if not parent else "key"
    known = _known_keys(parent)
    return f"unknown {kind} {where!r}" + (f"; known: {', '.join(known)}" if known else "")


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read params.yaml; an unknown section or key, or a bad value, raises ConfigError naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run mmfuse from the project root (where params.yaml is).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, validate:, ...).")
    missing_marker = _find_value(raw, OMEGACONF_MISSING)
    if missing_marker is not None:
        raise ConfigError(
            f"{path}: {missing_marker} is {OMEGACONF_MISSING!r}, which `dvc exp run -S` (OmegaConf) reads as a "
            "missing value and refuses; use another string."
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {'; '.join(_problem(err) for err in exc.errors())}") from exc


def load_serve_params(path: Path = PARAMS_FILE) -> ServeParams:
    """The `serve:` section of params.yaml (a bento ships its copy); defaults where there is none.

    Serving must also run where the pipeline's params.yaml is absent (a container built
    from a bento without it), hence the fallback; a params.yaml that exists but is invalid
    still fails loudly, naming the key.
    """
    return load_params(path).serve if Path(path).exists() else ServeParams()
