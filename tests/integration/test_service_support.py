"""Shared helpers of the service tests (no tests here): a tiny champion, media payloads, a live server.

The champion is a randomly initialised MultimodalClassifier with small preprocessing
limits, saved with `save_artifact` and promoted with `registry.promote`: the service code
path is the production one, only the weights are meaningless (serving does not care).
Importing a fixture from here into several test modules builds it once per module, so
the builders are cached per process.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from starlette.testclient import TestClient

from mmfuse.inference import registry
from mmfuse.inference.log import LOG_ENV
from mmfuse.models.artifact import save_artifact
from mmfuse.models.classifier import ModelSpec, MultimodalClassifier
from mmfuse.params.preprocess import AudioParams, ImageParams, PreprocessParams, TextParams
from mmfuse.params.train import ArchParams, EncoderParams
from mmfuse.preprocess.state import PreprocessState
from mmfuse.preprocess.text import Vocabulary
from mmfuse.serving import serve_command
from mmfuse.serving.auth import TOKEN_ENV
from mmfuse.serving.service import MMFuse

LABELS = ("zero", "one", "two")
TEMPERATURE = 2.0
# Small on purpose: the limit tests send payloads just over them.
PREPROCESS = PreprocessParams(
    image=ImageParams(size=16, max_bytes=50_000),
    audio=AudioParams(max_seconds=2.0, max_bytes=200_000, n_mels=16, n_frames=32),
    text=TextParams(max_chars=100, max_len=12),
)
ARCH = ArchParams(
    embed_dim=8,
    token_dim=4,
    fusion_hidden=8,
    lmf_rank=2,
    image=EncoderParams(channels=[4]),
    audio=EncoderParams(channels=[4]),
    text=EncoderParams(channels=[4]),
)


def tiny_state() -> PreprocessState:
    return PreprocessState(
        params=PREPROCESS,
        labels=LABELS,
        vocab=Vocabulary.fit(LABELS, min_freq=1),
        image_mean=0.2,
        image_std=0.3,
        audio_mean=(-40.0,) * PREPROCESS.audio.n_mels,
        audio_std=(15.0,) * PREPROCESS.audio.n_mels,
    )


def build_artifact(out_dir: Path, modalities: tuple[str, ...] = ("image", "audio", "text")) -> Path:
    """A model artifact (with calibration.json) as the train and evaluate stages write it."""
    state = tiny_state()
    shapes = state.shapes()
    torch.manual_seed(0)
    spec = ModelSpec(
        modalities=modalities,
        fusion="gated",
        n_classes=len(LABELS),
        shapes={m: shapes[m] for m in modalities},
        vocab_size=len(state.vocab.tokens),
        arch=ARCH,
    )
    model = MultimodalClassifier(spec).eval()
    config = {"labels": list(LABELS), "preprocessing": {"format": "test", **state.to_dict()}}
    save_artifact(out_dir, model, config, {"accuracy": 0.0})
    (out_dir / "calibration.json").write_text(json.dumps({"temperature": TEMPERATURE}))
    return out_dir


_promoted: list[str] = []


def promoted_champion() -> str:
    """The tiny champion's tag in the test model store (BENTOML_HOME, set by tests/conftest.py).

    Promoted once per process, and again only if another test emptied the store or
    promoted a model of its own since.
    """
    current = registry.champion()
    if not _promoted or current is None or str(current.tag) != _promoted[-1]:
        with tempfile.TemporaryDirectory(prefix="mmfuse-champion-") as root:
            _promoted.append(registry.promote(build_artifact(Path(root) / "artifact"), {"source": "service tests"}))
    return _promoted[-1]


@contextmanager
def running(log: Path, token: str | None = None, champion: Path | None = None) -> Iterator[TestClient]:
    """One app instance of the service (its lifespan runs: start-up loads the champion, shutdown
    flushes the inference log), logging to `log`, with auth on when `token` is given. The
    champion is the tiny test model, or the artifact `champion` when given (promoted first)."""
    if champion is None:
        promoted_champion()
    else:
        registry.promote(champion, {"source": "service tests"})
    with pytest.MonkeyPatch.context() as patch:
        # BentoML registers its request metrics per app in the process-wide Prometheus registry,
        # so a second in-process app would collide; /metrics is tested on the real server.
        patch.setitem(MMFuse.config, "metrics", {"enabled": False})
        patch.setenv(LOG_ENV, str(log))
        if token is None:
            patch.delenv(TOKEN_ENV, raising=False)
        else:
            patch.setenv(TOKEN_ENV, token)
        with TestClient(MMFuse.to_asgi()) as client:
            yield client


def png(size: int = 20, seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def wav(seconds: float = 0.5, rate: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A `bentoml serve` subprocess on 127.0.0.1."""

    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown runs the service's close hook), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(workdir: Path, extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> Server:
    """Start the service from `workdir` (its params.yaml and data/ are used) and wait for /readyz."""
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(extra_env or {})}
    log_file = workdir / f"server-{port}.log"
    command = serve_command("127.0.0.1", port)
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log_file.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"bentoml serve not ready after {timeout} s:\n{log_file.read_text()[-4000:]}")


def serving(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Generator body for a fixture: a running server, stopped afterwards."""
    server = start_server(workdir, extra_env)
    try:
        yield server
    finally:
        server.stop()
