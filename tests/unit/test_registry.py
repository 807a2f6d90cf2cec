"""The champion in the BentoML store: promotion, crash safety, rollback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmfuse.inference import registry


@pytest.fixture(autouse=True)
def empty_store():
    shutil.rmtree(registry.store_root() / "models" / registry.MODEL_NAME, ignore_errors=True)
    registry.decision_log().unlink(missing_ok=True)


def _artifact(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"name": "{name}"}}')
    (folder / "model.safetensors").write_bytes(name.encode() * 100)
    return folder


def test_first_promotion_makes_a_champion(tmp_path):
    assert registry.champion() is None
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.champion_path()
    tag = registry.promote(_artifact(tmp_path, "a"), {"accuracy": 91.0})
    assert str(registry.champion().tag) == tag
    assert (registry.champion_path() / "config.json").read_text() == '{"name": "a"}'
    assert registry.champion().info.metadata["accuracy"] == 91.0


def test_crash_mid_promotion_keeps_the_old_champion(tmp_path, monkeypatch):
    old = registry.promote(_artifact(tmp_path, "a"), {})

    def crash(src, dst, **kwargs):
        Path(dst, "config.json").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(_artifact(tmp_path, "b"), {})
    monkeypatch.undo()
    assert str(registry.champion().tag) == old
    assert (registry.champion_path() / "config.json").read_text() == '{"name": "a"}'
    assert len(registry.versions()) == 1


def test_rollback_restores_the_previous_champion(tmp_path):
    first = registry.promote(_artifact(tmp_path, "a"), {})
    second = registry.promote(_artifact(tmp_path, "b"), {})
    assert registry.champion().info.metadata["previous"] == first
    restored = registry.rollback()
    assert restored not in (first, second)
    assert (registry.champion_path() / "config.json").read_text() == '{"name": "a"}'
    assert registry.history()[-1]["action"] == "rollback" and registry.history()[-1]["restored"] == first
    with pytest.raises(registry.RegistryError, match="first champion"):
        registry.rollback()


def test_rollback_without_champion_is_clear():
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback()
