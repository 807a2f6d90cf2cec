"""Where each stage reads and writes, relative to the project root (dvc.yaml uses the same)."""

from pathlib import Path

SOURCES = Path("data/sources")
EXTERNAL = Path("data/external")
RAW = Path("data/raw")
PROCESSED = Path("data/processed")
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = Path("metrics")
PLOTS = Path("plots")
