"""Serving: the BentoML service for the champion, and the inference log it writes.

`serve(host, port)` is what `mmfuse serve` runs. Nothing heavy is imported here, so the CLI
starts fast; BentoML and torch load only when serving starts.
"""

from __future__ import annotations

import sys

SERVICE = "mmfuse.serving.service:MMFuse"


def serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line of this service, in this interpreter (tests and benchmarks start it so)."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def serve(host: str, port: int) -> None:
    """Serve the champion over HTTP until interrupted (same as `bentoml serve mmfuse.serving.service:MMFuse`).

    Run from the project root: params.yaml's `serve:` section and the default inference
    log location (data/inference/log.sqlite) are relative to the working directory.
    Raises RegistryError when the model store holds no champion yet.
    """
    from mmfuse.inference import registry

    if registry.champion() is None:
        raise registry.RegistryError(
            "no champion in the model store yet: run the pipeline (dvc repro) to promote one, then serve."
        )
    from mmfuse.serving.service import MMFuse

    MMFuse.serve_http(host=host, port=port)
