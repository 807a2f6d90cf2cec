"""The monitoring state: when the last check ended and whether its window had drifted.

Kept in a small JSON file so that each drifted episode triggers retraining once: only the
transition from "not drifted" into "drifted" triggers, later checks that still see drift
do not, and a clean check re-arms the trigger.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mmfuse.io import write_json

HISTORY = 100  # live accuracy points kept for the trend


class AccuracyPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: datetime
    accuracy: float
    n: int


class MonitorState(BaseModel):
    """What one check hands the next."""

    model_config = ConfigDict(frozen=True)

    last_check: datetime | None = None  # logged rows at or after this time are the next window
    drifted: bool = False  # the last judged window had drifted (a trigger already went out)
    last_trigger: datetime | None = None
    accuracy_history: tuple[AccuracyPoint, ...] = ()


def load_state(path: Path) -> MonitorState:
    """The stored state; a missing file is a first check (no window yet, not drifted)."""
    path = Path(path)
    if not path.exists():
        return MonitorState()
    return MonitorState.model_validate(json.loads(path.read_text()))


def save_state(path: Path, state: MonitorState) -> None:
    state = state.model_copy(update={"accuracy_history": state.accuracy_history[-HISTORY:]})
    write_json(Path(path), state.model_dump(mode="json"))
