"""The locks stay true: every package pinned with hashes, the pins of pyproject.toml and
requirements-serve.in honoured, the bento's lock agreeing with make's, and the environment the
tests run in being exactly make's lock (ML Test Score Mo1: an upstream release cannot change a build)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK, SERVE_LOCK = ROOT / "requirements-dev.lock", ROOT / "requirements-serve.lock"
PROJECT = "mmfuse"


def read_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """{canonical name: (requirement, its hashes)} from a `uv pip compile --generate-hashes` file."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())  # join continuation lines
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = [part.strip() for part in line.split("--hash=")]
        requirement = Requirement(spec)
        entries[canonicalize_name(requirement.name)] = (requirement, hashes)
    return entries


def pinned(requirement: Requirement) -> str:
    [spec] = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def test_every_locked_package_is_pinned_with_a_sha256_hash() -> None:
    for lock in (DEV_LOCK, SERVE_LOCK):
        entries = read_lock(lock)
        assert len(entries) > 20, lock
        for name, (requirement, hashes) in entries.items():
            assert pinned(requirement) and hashes, (lock.name, name)
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (lock.name, name)


def _declared(requirements: list[str]) -> list[Requirement]:
    """The requirements, less the project's own extras (dev pulls in `mmfuse[s3]`: its pins are
    declared, and checked, under that extra)."""
    return [r for r in map(Requirement, requirements) if canonicalize_name(r.name) != PROJECT]


def test_the_locks_honour_every_declared_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve_in = [line for line in (ROOT / "requirements-serve.in").read_text().splitlines() if line[:1].isalpha()]
    for lock, declared in (
        (DEV_LOCK, project["dependencies"] + sum(project["optional-dependencies"].values(), [])),
        (SERVE_LOCK, serve_in),
    ):
        entries = read_lock(lock)
        for requirement in _declared(declared):
            name = canonicalize_name(requirement.name)
            assert name in entries, f"{requirement} is not in {lock.name}: run `make lock`"
            version = pinned(entries[name][0])
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock.name} holds {name}=={version}, but {requirement} is declared: run `make lock`"
            )


def test_the_bento_installs_its_lock_at_the_versions_make_installs() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == f"./{SERVE_LOCK.name}"
    assert bentofile["python"]["lock_packages"] is False and "packages" not in bentofile["python"]
    dev = read_lock(DEV_LOCK)
    for name, (requirement, hashes) in read_lock(SERVE_LOCK).items():
        assert name in dev and pinned(dev[name][0]) == pinned(requirement), name
        assert set(hashes) <= set(dev[name][1]), name


def test_the_environment_is_exactly_the_lock() -> None:
    """What `make setup` installed, nothing more and nothing else: a package installed by hand,
    or a lock edited without reinstalling, fails here."""
    locked = {
        name: pinned(requirement)
        for name, (requirement, _) in read_lock(DEV_LOCK).items()
        if requirement.marker is None or requirement.marker.evaluate()
    }
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    installed.pop(PROJECT)
    assert installed == locked
