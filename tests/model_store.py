"""The test model store (BENTOML_HOME, one per test process: tests/conftest.py), emptied between users."""

from __future__ import annotations

import shutil

from mmfuse.inference import registry


def clear_store() -> None:
    """Remove every champion, challenger and recorded decision. Tests that share a worker process
    share its store: a fake (some deliberately incomplete) left by one must not become the
    champion a later test's promote stage compares against."""
    for name in (registry.MODEL_NAME, registry.SHADOW_NAME):
        shutil.rmtree(registry.store_root() / "models" / name, ignore_errors=True)
    shutil.rmtree(registry.decision_log().parent, ignore_errors=True)
