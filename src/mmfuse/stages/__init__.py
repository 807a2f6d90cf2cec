"""The DVC stages, one module each with a keyword-only `run()` and a command-line `main()`.

dvc.yaml runs `python -m mmfuse.stages.<stage> --<input> PATH ... --<output> PATH`, so the
paths are written once, there; `mmfuse <stage> ...` runs the same `main`. A known failure
(`MMFuseError`: bad data, bad params) prints one red line and exits with `KNOWN_FAILURE`;
when `FAILURE_RECORD_ENV` names a file, the error is also written there as JSON, which
is how an orchestrator tells a known failure from a transient one without parsing text.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from mmfuse.errors import MMFuseError

KNOWN_FAILURE = 2
FAILURE_RECORD_ENV = "MMFUSE_FAILURE_RECORD"
console = Console(stderr=True)


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MMFuseError into a red one-line message (and a failure record) and exit status KNOWN_FAILURE."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MMFuseError as exc:
            console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            record = os.environ.get(FAILURE_RECORD_ENV)
            if record:
                Path(record).write_text(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            sys.exit(KNOWN_FAILURE)

    return wrapper


def stage_cli(main: Callable[..., None], args: Sequence[str] | None = None, prog_name: str | None = None) -> None:
    """Parse `args` (default: sys.argv) for one stage's `main` and run it."""
    app = typer.Typer(add_completion=False)
    app.command()(friendly(main))
    app(args=list(args) if args is not None else None, prog_name=prog_name)
