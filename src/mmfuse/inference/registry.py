"""The champion in the BentoML model store, and the log of every promotion decision.

Every promoted model is a new version of one store entry, so `mmfuse:latest` *is* the
champion. BentoML moves `latest` only after a version is completely written, but it copies
a version into the store file by file: a promotion killed mid-copy left a version holding
only `model.yaml`, listed as the newest `mmfuse` with the challenger's metrics, and once the
real champion was deleted `latest` moved onto it. So each version records the size of every
file it must hold (`FILES` in its metadata) and a version is *complete* only when all are
there. Promotion, rollback and cleaning run under one lock; each first removes what an
interrupted one left (incomplete versions, its staging folder), so the store always holds
either the previous good state or the new complete one, never a visible mix.

A rollback re-promotes an earlier champion as a new version, keeping history linear.

A challenger that passed every offline gate can first be served *in shadow*: stored as the
one version of a second entry (`mmfuse-shadow`), which the service scores beside the
champion without answering with it. It never moves `mmfuse:latest`; any promotion ends it,
since its evidence was gathered against the champion that promotion replaces.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from mmfuse.errors import MMFuseError
from mmfuse.models.artifact import WEIGHTS

MODEL_NAME = "mmfuse"
SHADOW_NAME = "mmfuse-shadow"  # at most one version: the challenger served in shadow
ROLE_LABEL = "role"
FILES = "files"  # metadata: {relative path: size in bytes} of every file the version must hold
MODEL_YAML = "model.yaml"  # BentoML's own description of a version, written by BentoML itself


class RegistryError(MMFuseError):
    """The model store has no champion (yet), no complete one, or no earlier one to roll back to."""


def store_root() -> Path:
    """BentoML's home (the documented $BENTOML_HOME, default ~/bentoml): the model store lives in it."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def _own_dir() -> Path:
    """mmfuse's own files beside the store: the decision log, the lock, the staging folder."""
    return store_root() / "mmfuse"


def decision_log() -> Path:
    """Append-only JSON lines beside the store: it outlives any one project checkout."""
    return _own_dir() / "decisions.jsonl"


def _staging_root() -> Path:
    return _own_dir() / "staging"


def _version_dirs(*names: str) -> list[Path]:
    """Every version folder of the entries `names` (default: both), whether or not BentoML can read it
    ($BENTOML_HOME/models/<name>/<version>)."""
    entries = [store_root() / "models" / name for name in names or (MODEL_NAME, SHADOW_NAME)]
    return sorted(p for entry in entries if entry.is_dir() for p in entry.iterdir() if p.is_dir())


def _tag(folder: Path) -> str:
    return f"{folder.parent.name}:{folder.name}"


def _load(tag: str) -> bentoml.Model | None:
    """The version's model, or None when its model.yaml is missing or torn."""
    try:
        return bentoml.models.get(tag)
    except Exception:  # a torn model.yaml raises whatever its YAML and attrs parsing meets
        return None


def missing_files(model: bentoml.Model) -> list[str]:
    """The files `model` should hold but does not (absent, or of another size); [] for a complete version.

    Versions promoted before sizes were recorded are judged by their weights alone.
    """
    root = Path(model.path)
    expected = model.info.metadata.get(FILES) or {WEIGHTS: None}
    return sorted(
        name
        for name, size in expected.items()
        if not (root / name).is_file() or (size is not None and (root / name).stat().st_size != size)
    )


def broken_versions() -> list[str]:
    """Tags of incomplete versions: left by a promotion that was interrupted while copying into the store."""
    broken = []
    for folder in _version_dirs():
        model = _load(_tag(folder))
        if model is None or missing_files(model):
            broken.append(_tag(folder))
    return broken


def champion() -> bentoml.Model | None:
    """The champion (`latest`), None when the store holds none; an incomplete one is an error, never served."""
    fix = "Run `mmfuse champion clean` to remove it (the complete version before it becomes the champion again)."
    try:
        model = bentoml.models.get(f"{MODEL_NAME}:latest")
    except NotFound:
        return None
    except BentoMLException as exc:
        raise RegistryError(f"the store's latest {MODEL_NAME} version cannot be read ({exc}). {fix}") from exc
    missing = missing_files(model)
    if missing:
        raise RegistryError(
            f"the store's latest {MODEL_NAME} version {model.tag} is incomplete (missing {', '.join(missing)}): "
            f"a promotion was interrupted. {fix}"
        )
    return model


def version(tag: str) -> bentoml.Model | None:
    """One complete version by tag, None when the store lacks it or it is incomplete."""
    model = _load(tag)
    return model if model is not None and not missing_files(model) else None


def versions() -> list[bentoml.Model]:
    """Every complete champion version the store holds, oldest first."""
    found = [m for m in map(version, map(_tag, _version_dirs(MODEL_NAME))) if m is not None]
    return sorted(found, key=lambda m: m.info.creation_time)


def challenger() -> bentoml.Model | None:
    """The challenger served in shadow, None when there is none or it is incomplete: a shadow
    is optional, so a broken one is skipped (and cleaned by the next writer), never fatal."""
    try:
        model = bentoml.models.get(f"{SHADOW_NAME}:latest")
    except BentoMLException:  # NotFound included
        return None
    return None if missing_files(model) else model


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


def _file_sizes(folder: Path) -> dict[str, int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MODEL_YAML)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}


@contextmanager
def _writing() -> Iterator[list[str]]:
    """One writer of the store at a time (promote, rollback, clean), which first clears what a
    killed writer left: its staging folder and incomplete versions (yields their tags)."""
    _own_dir().mkdir(parents=True, exist_ok=True)
    with open(_own_dir() / "store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(_staging_root(), ignore_errors=True)  # only a killed writer leaves it: we hold the lock
            removed, incomplete = [], []
            for folder in _version_dirs():
                model = _load(_tag(folder))
                if model is None:  # no model.yaml: BentoML cannot even list the entry until it is gone
                    shutil.rmtree(folder)
                    removed.append(_tag(folder))
                elif missing_files(model):
                    incomplete.append(str(model.tag))
            for tag in incomplete:
                bentoml.models.delete(tag)  # BentoML's own delete moves `latest` back to the newest left
            removed += incomplete
            if removed:
                log_decision({"action": "clean", "removed": removed})
            yield removed
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def clean() -> list[str]:
    """Remove incomplete versions and a killed writer's staging folder; return the removed tags."""
    with _writing() as removed:
        return removed


def _store(
    artifact_dir: Path, metadata: dict[str, Any], companions: dict[str, Path], name: str = MODEL_NAME
) -> bentoml.Model:
    """A new version of `name` holding `artifact_dir` plus `companions` ({file name: path}); call under the lock.

    BentoML builds a version in a temp folder before copying it into the store; it is put
    under our own staging folder, so a kill leaves nothing behind that the next writer does
    not remove.
    """
    staging = _staging_root()
    staging.mkdir(parents=True, exist_ok=True)
    files = {**_file_sizes(artifact_dir), **{name: Path(path).stat().st_size for name, path in companions.items()}}
    metadata = {**_without_none(metadata), FILES: files}
    system_tmp, tempfile.tempdir = tempfile.tempdir, str(staging)
    try:
        role = "champion" if name == MODEL_NAME else "challenger"
        with bentoml.models.create(name, labels={ROLE_LABEL: role}, metadata=metadata) as model:
            shutil.copytree(artifact_dir, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MODEL_YAML))
            for name, path in companions.items():
                shutil.copyfile(path, Path(model.path) / name)
    finally:
        tempfile.tempdir = system_tmp
    shutil.rmtree(staging, ignore_errors=True)
    return bentoml.models.get(model.tag)


def log_decision(record: dict[str, Any]) -> None:
    path = decision_log()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(), **record}, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        handle.write(line)


def history() -> list[dict[str, Any]]:
    """The decision log, oldest first; a line torn by a crash mid-append is skipped, not fatal."""
    path = decision_log()
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _end_shadow() -> list[str]:
    """Delete every shadow version (call under the lock); their tags."""
    ended = [_tag(folder) for folder in _version_dirs(SHADOW_NAME)]
    for tag in ended:
        bentoml.models.delete(tag)
    return ended


def promote(artifact_dir: Path, metadata: dict[str, Any], companions: dict[str, Path] | None = None) -> str:
    """Store `artifact_dir` and its `companions` ({file name: path}, e.g. calibration, trust) as the
    new champion; return its tag. What an interrupted promotion left is removed first, and any
    shadow ends (the challenger became the champion, or its evidence was against the old one)."""
    with _writing():
        previous = champion()
        metadata = {**metadata, "previous": str(previous.tag) if previous else None}
        model = _store(Path(artifact_dir), metadata, dict(companions or {}))
        ended = _end_shadow()
    if ended:
        log_decision({"action": "end_shadow", "removed": ended, "reason": f"{model.tag} promoted"})
    return str(model.tag)


def shadow(artifact_dir: Path, metadata: dict[str, Any], companions: dict[str, Path] | None = None) -> str:
    """Store `artifact_dir` (and `companions`) as the challenger served in shadow, replacing any
    earlier one; the champion is untouched. A running service scores it from its next start."""
    with _writing():
        replaced = _end_shadow()
        model = _store(Path(artifact_dir), metadata, dict(companions or {}), name=SHADOW_NAME)
    log_decision({"action": "shadow", "tag": str(model.tag), "replaced": replaced})
    return str(model.tag)


def end_shadow(reason: str) -> list[str]:
    """Stop shadowing: delete the challenger's shadow copy (recorded with `reason`); the removed tags."""
    with _writing():
        ended = _end_shadow()
    if ended:
        log_decision({"action": "end_shadow", "removed": ended, "reason": reason})
    return ended


def lineage(model: bentoml.Model) -> str:
    """The version whose place in the champion history `model` holds: itself, or what a rollback copy restores."""
    return model.info.metadata.get("restored") or str(model.tag)


def rollback(to: str | None = None) -> str:
    """Make an earlier champion the champion again, as a new version (recorded in the log).

    Without `to`, walks the champion history back one step from where the current champion
    stands in it, so that rolling back twice goes back twice: A, B, C; rollback restores B,
    then A. A rollback copy stands where the version it restores stood. `to` restores any
    complete version of the store.
    """
    with _writing():
        current = champion()
        if current is None:
            raise RegistryError("no champion in the model store: nothing to roll back.")
        if to is None:
            standing = lineage(current)
            original = _load(standing)
            to = original.info.metadata.get("previous") if original is not None else None
            if not to:
                copy = f" (a rollback copy of {standing})" if standing != str(current.tag) else ""
                raise RegistryError(
                    f"{current.tag}{copy} holds the first champion's place: there is nothing earlier to roll back "
                    "to. `mmfuse champion rollback --to TAG` restores any version `mmfuse champion show` lists."
                )
        to = to if ":" in to else f"{MODEL_NAME}:{to}"
        target = version(to) if to.startswith(f"{MODEL_NAME}:") else None  # a challenger is no earlier champion
        if target is None:
            raise RegistryError(f"{to} is no complete version in the model store: `mmfuse champion show` lists them.")
        origin = lineage(target)
        original = _load(origin)
        metadata = {
            **target.info.metadata,
            "rolled_back_from": str(current.tag),
            "restored": origin,
            "previous": original.info.metadata.get("previous") if original is not None else None,
        }
        metadata.pop(FILES, None)
        model = _store(Path(target.path), metadata, {})
    log_decision({"action": "rollback", "from": str(current.tag), "to": str(model.tag), "restored": origin})
    return str(model.tag)
