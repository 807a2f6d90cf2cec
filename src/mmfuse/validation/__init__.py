"""The validate stage: Great Expectations suites over the manifest and per-file media facts.

``run_validation`` is imported lazily: worker processes that read media import
``mmfuse.validation.facts``, which runs this file first, and must not pay for importing
Great Expectations (seconds per worker).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Telemetry off by default (DESIGN: "Local and offline"); the context config also disables it.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

if TYPE_CHECKING:
    from mmfuse.validation.runner import run_validation

__all__ = ["run_validation"]


def __getattr__(name: str) -> Any:
    if name == "run_validation":
        from mmfuse.validation.runner import run_validation

        return run_validation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
