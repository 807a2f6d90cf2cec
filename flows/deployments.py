"""Serve the nightly training and hourly monitoring deployments (thin: see mmfuse.monitoring.orchestrate)."""

from __future__ import annotations

from pathlib import Path

from mmfuse.config import load_params
from mmfuse.monitoring.orchestrate import orchestrate

if __name__ == "__main__":
    orchestrate(Path.cwd(), load_params(Path("params.yaml")))
