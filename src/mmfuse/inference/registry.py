"""The champion in the BentoML model store, and the log of every promotion decision.

Every promoted model is a new version of one store entry, so `mmfuse:latest` *is* the
champion: BentoML moves `latest` only after a version is completely written, so a
crash mid-promotion leaves the old champion in place, never a half-copied one. A
rollback re-promotes the previous champion as a new version, keeping history linear.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from mmfuse.errors import MMFuseError

MODEL_NAME = "mmfuse"
ROLE_LABEL = "role"


class RegistryError(MMFuseError):
    """The model store has no champion (yet), or no previous one to roll back to."""


def store_root() -> Path:
    """BentoML's home (the documented $BENTOML_HOME, default ~/bentoml): the model store lives in it."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def decision_log() -> Path:
    """Append-only JSON lines beside the store: it outlives any one project checkout."""
    return store_root() / "mmfuse" / "decisions.jsonl"


def champion() -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{MODEL_NAME}:latest")
    except NotFound:
        return None


def versions() -> list[bentoml.Model]:
    """Every champion the store has held, oldest first."""
    try:
        return sorted(bentoml.models.list(MODEL_NAME), key=lambda m: m.info.creation_time)
    except NotFound:
        return []


def champion_path() -> Path:
    """The champion's artifact folder, for serving and for re-scoring."""
    model = champion()
    if model is None:
        raise RegistryError("no champion in the model store yet: run the pipeline (dvc repro) to promote one.")
    return Path(model.path)


def _without_none(value: Any) -> Any:
    """BentoML metadata refuses None; an absent key says the same."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def _store(artifact_dir: Path, metadata: dict[str, Any]) -> bentoml.Model:
    labels = {ROLE_LABEL: "champion"}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=_without_none(metadata)) as model:
        shutil.copytree(artifact_dir, model.path, dirs_exist_ok=True)
    return model


def log_decision(record: dict[str, Any]) -> None:
    path = decision_log()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(), **record}, sort_keys=True) + "\n")


def history() -> list[dict[str, Any]]:
    path = decision_log()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def promote(artifact_dir: Path, metadata: dict[str, Any]) -> str:
    """Store `artifact_dir` as the new champion; return its tag."""
    previous = champion()
    model = _store(Path(artifact_dir), {**metadata, "previous": str(previous.tag) if previous else None})
    return str(model.tag)


def rollback() -> str:
    """Make the champion before the current one champion again (recorded in the log)."""
    current = champion()
    if current is None:
        raise RegistryError("no champion in the model store: nothing to roll back.")
    previous_tag = current.info.metadata.get("previous")
    if not previous_tag:
        raise RegistryError(f"{current.tag} is the first champion: there is no previous one to roll back to.")
    try:
        previous = bentoml.models.get(previous_tag)
    except NotFound as exc:
        raise RegistryError(f"the previous champion {previous_tag} is no longer in the store.") from exc
    metadata = {**previous.info.metadata, "rolled_back_from": str(current.tag), "restored": previous_tag}
    model = _store(Path(previous.path), {**metadata, "previous": previous.info.metadata.get("previous")})
    log_decision({"action": "rollback", "from": str(current.tag), "to": str(model.tag), "restored": previous_tag})
    return str(model.tag)
