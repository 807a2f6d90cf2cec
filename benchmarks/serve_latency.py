"""Latency and throughput of the served model over HTTP, against the same model in-process.

Starts `bentoml serve mmfuse.serving.service:MMFuse` on 127.0.0.1 (a free port) from a
scratch working directory holding a copy of ./params.yaml (so the `serve:` settings
apply) and sends /predict requests carrying all three modalities (a 28x28 PNG, a 1 s
8 kHz WAV, a short text):
- sequential (one keep-alive connection): p50/p95/p99 latency in ms;
- throughput at concurrency 1, 8 and 32 (asyncio + httpx, one connection per
  concurrent client, each for a fixed time, --repeats interleaved rounds, the median
  reported and every run kept): completed requests per second, and the CPU
  time per request of the server (all its processes) and of the load generator, which
  tell what the machine could do without other work on it;
- memory: the server's resident memory (all its processes) before and after --memory-requests
  more requests at concurrency 32, once the throughput rounds have warmed it up:
  rss_growth_percent (goal <= 5 %);
- with --peer, against a bare Starlette + uvicorn peer serving the same Predictor with the
  same number of workers (benchmarks/serve_peer.py), both loaded by wrk (a compiled load
  generator, Debian's `wrk`, so the generator takes less of the shared cores than Python's),
  in interleaved rounds: p50 at concurrency 1 and requests/s at concurrency 32 of each,
  overhead_vs_peer (p50 ratio, goal <= 1.2) and rps_ratio_vs_peer (goal >= 0.9);
- in-process: the same model's preprocess + forward for one sample (Predictor.prepare
  and Predictor.forward, no HTTP), median ms; overhead_ratio = p50_ms / inprocess_ms.
  The in-process and sequential HTTP timings are taken in alternating chunks, so both
  see the same machine load (this machine is shared: other work shifts both figures).

The model is the champion of the current BentoML store with --champion; otherwise a
stand-in built from params.yaml (train.arch, preprocess.*) with random weights is
promoted into a scratch store (latency depends on the architecture, not on the weights).
The load generator runs on the same machine as the server and shares its cores.
Run from the project root; writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mmfuse.io import write_json
from mmfuse.serving import serve_command

RESULT = Path("benchmarks/results/serve.json")
GOALS = {
    "p50_ms": 10.0,
    "rps_c32": 300.0,
    "overhead_ratio": 3.0,
    "rss_growth_percent": 5.0,
    "overhead_vs_peer": 1.2,
    "rps_ratio_vs_peer": 0.9,
}


def payload() -> dict[str, Any]:
    """Multipart fields of one request with all three modalities, sized like avdigits samples."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 12:16] = 255  # a stroke, like a handwritten "1"
    pixels = np.clip(pixels + rng.integers(0, 40, pixels.shape), 0, 255).astype(np.uint8)
    image = io.BytesIO()
    Image.fromarray(pixels).save(image, "PNG")
    t = np.arange(8000) / 8000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(t.size) + 0.01 * rng.standard_normal(t.size)
    audio = io.BytesIO()
    sf.write(audio, wave.astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return {
        "files": {
            "image": ("digit.png", image.getvalue(), "image/png"),
            "audio": ("clip.wav", audio.getvalue(), "audio/wav"),
        },
        "data": {"text": "one"},
    }


def stand_in_artifact(out_dir: Path) -> Path:
    """A model artifact with the configured architecture and preprocessing, random weights."""
    import numpy as np
    import torch

    from mmfuse.modality import MODALITIES
    from mmfuse.models.artifact import save_artifact
    from mmfuse.models.classifier import ModelSpec, MultimodalClassifier
    from mmfuse.params import load_params
    from mmfuse.preprocess.state import PreprocessState
    from mmfuse.preprocess.text import Vocabulary

    params = load_params()
    labels = tuple(str(d) for d in range(10))
    words = "zero one two three four five six seven eight nine zéro un deux trois quatre cinq six sept huit neuf"
    state = PreprocessState(
        params=params.preprocess,
        labels=labels,
        vocab=Vocabulary.fit([words], min_freq=1),
        image_mean=0.13,
        image_std=0.3,
        audio_mean=tuple(np.linspace(-60, -40, params.preprocess.audio.n_mels).tolist()),
        audio_std=(10.0,) * params.preprocess.audio.n_mels,
    )
    shapes = state.shapes()
    torch.manual_seed(0)
    spec = ModelSpec(
        modalities=MODALITIES,
        fusion=params.train.fusion,
        n_classes=len(labels),
        shapes={m: shapes[m] for m in MODALITIES},
        vocab_size=len(state.vocab.tokens),
        arch=params.train.arch,
    )
    model = MultimodalClassifier(spec).eval()
    save_artifact(
        out_dir, model, {"labels": list(labels), "preprocessing": state.to_dict()}, {"note": "benchmark stand-in"}
    )
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    command: Callable[[int], list[str]], workdir: Path, env: dict[str, str], name: str, ready: Callable[[str], bool]
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `command(port)` on a free port from `workdir`; (process, url) once `ready(url)`."""
    import httpx

    port = free_port()
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command(port), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited:\n{log.read_text()[-3000:]}")
        try:
            if ready(url):
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    sys.exit(f"{name} did not become ready")


def start_server(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    def ready(url: str) -> bool:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200

    return launch(lambda port: serve_command("127.0.0.1", port), workdir, env, "server", ready)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def sequential(url: str, body: dict[str, Any], count: int, headers: dict[str, str]) -> list[float]:
    import httpx

    timings = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            response = client.post("/predict", **body)
            timings.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return timings


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (the server's workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def throughput(
    url: str, body: dict[str, Any], concurrency: int, seconds: float, server_pid: int
) -> tuple[float, float, float]:
    """(requests/s, server CPU ms per request, load generator CPU ms per request)."""
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    start = time.perf_counter()
    done = asyncio.run(_throughput(url, body, concurrency, seconds, {}))
    elapsed = time.perf_counter() - start
    server_ms = (cpu_seconds(server_pid) - server_before) * 1000 / done
    client_ms = (time.process_time() - client_before) * 1000 / done
    return done / elapsed, server_ms, client_ms


async def _throughput(url: str, body: dict[str, Any], concurrency: int, seconds: float, headers: dict[str, str]) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        done = 0
        failures = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, failures
            while time.perf_counter() < deadline:
                response = await client.post("/predict", **body)
                if response.status_code == 200:
                    done += 1
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        sys.exit(f"{failures} requests failed at concurrency {concurrency}")
    return done


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def _fixed(url: str, body: dict[str, Any], concurrency: int, total: int) -> int:
    """Send exactly `total` requests from `concurrency` clients; the count that failed."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    left, failures = total, 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal left, failures
            while left > 0:
                left -= 1
                if (await client.post("/predict", **body)).status_code != 200:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
"""


def _wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run against url/predict: requests/s and the p50 latency (ms); exits on any non-2xx."""
    import re

    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    done = subprocess.run([*command, "-s", str(script), f"{url}/predict"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"wrk failed against {url}: {done.stderr or done.stdout}")
    out = done.stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw failed requests at {url}:\n{out}")
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": float(value) * scale}


def start_peer(workdir: Path, artifact: Path, workers: int, env: dict[str, str], body: dict[str, Any]) -> tuple:
    """benchmarks/serve_peer.py under uvicorn with `workers` processes; (process, url) once it answers."""
    import httpx

    def command(port: int) -> list[str]:
        app = [sys.executable, "-m", "uvicorn", "serve_peer:app", "--app-dir", str(Path(__file__).parent.resolve())]
        return [*app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]

    def ready(url: str) -> bool:
        return httpx.post(f"{url}/predict", timeout=5, **body).status_code == 200

    return launch(command, workdir, {**env, "PEER_ARTIFACT": str(artifact)}, "peer", ready)


def compare_with_peer(
    url: str, peer: str, body: dict[str, Any], workdir: Path, seconds: float, repeats: int
) -> dict[str, Any]:
    """Interleaved wrk rounds against the service and the peer: p50 at c=1, requests/s at c=32."""
    import httpx

    request = httpx.Request("POST", f"{url}/predict", **body)
    payload = workdir / "body.bin"
    payload.write_bytes(request.read())
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=payload, content_type=request.headers["content-type"]))
    runs: dict[str, dict[str, list[float]]] = {name: {"p50_ms_c1": [], "rps_c32": []} for name in ("service", "peer")}
    for _ in range(repeats):
        for name, target in (("service", url), ("peer", peer)):
            runs[name]["p50_ms_c1"].append(_wrk(target, script, 1, seconds)["p50_ms"])
            runs[name]["rps_c32"].append(_wrk(target, script, 32, seconds)["rps"])
    med = {name: {k: statistics.median(v) for k, v in figures.items()} for name, figures in runs.items()}
    return {
        "load_generator": "wrk",
        "service": med["service"],
        "peer": med["peer"],
        "overhead_vs_peer": round(med["service"]["p50_ms_c1"] / med["peer"]["p50_ms_c1"], 3),
        "rps_ratio_vs_peer": round(med["service"]["rps_c32"] / med["peer"]["rps_c32"], 3),
        "runs": runs,
    }


def median_run(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The run with the median throughput (its CPU figures with it)."""
    return sorted(runs)[len(runs) // 2]


class InProcess:
    """The served model loaded in this process, timed on one sample: Predictor.prepare + forward."""

    def __init__(self, artifact_dir: Path, body: dict[str, Any], torch_threads: int) -> None:
        import torch

        from mmfuse.inference.predictor import Predictor, RawSample

        torch.set_num_threads(torch_threads)
        self.predictor = Predictor(artifact_dir, "in-process")
        self.sample = RawSample(body["files"]["image"][1], body["files"]["audio"][1], body["data"]["text"])

    def time(self, count: int) -> list[float]:
        timings = []
        for _ in range(count):
            start = time.perf_counter()
            self.predictor.forward([self.predictor.prepare(self.sample)])
            timings.append((time.perf_counter() - start) * 1000)
        return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--champion", action="store_true", help="serve the champion of the current BentoML store")
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests for the percentiles")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="throughput runs per concurrency (the median is reported)"
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file the server reads (serve:)"
    )
    parser.add_argument(
        "--memory-requests", type=int, default=20_000, help="requests at c=32 for the memory growth (0: skip)"
    )
    parser.add_argument("--peer", action="store_true", help="compare with a bare Starlette + uvicorn peer, by wrk")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if not args.params.exists():
        sys.exit(f"{args.params} not found: run from the project root (where params.yaml is)")

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "MMFUSE_INFERENCE_LOG": str(work / "log.sqlite")}
    env.pop("MMFUSE_API_TOKEN", None)
    if not args.champion:
        env["BENTOML_HOME"] = str(work / "bentoml")
    os.environ.update({k: env[k] for k in ("BENTOML_HOME", "BENTOML_DO_NOT_TRACK") if k in env})
    from mmfuse.inference import registry  # after BENTOML_HOME is settled: BentoML reads it at import

    if args.champion:
        if registry.champion() is None:
            sys.exit("no champion in the model store: run the pipeline first, or drop --champion")
        model_source = "champion"
    else:
        registry.promote(stand_in_artifact(work / "artifact"), {"source": "serve_latency benchmark stand-in"})
        model_source = "stand-in (params.yaml architecture, random weights)"
    champion = registry.champion()
    shutil.copy(args.params, work / "params.yaml")
    from mmfuse.params import load_params

    serve = load_params(args.params).serve
    body = payload()
    local = InProcess(Path(champion.path), body, serve.torch_threads)
    process, url = start_server(work, env)
    try:
        sequential(url, body, 100, {})  # warm-up
        local.time(30)
        timings: list[float] = []
        inprocess_timings: list[float] = []
        chunks = 10
        for _ in range(chunks):
            inprocess_timings += local.time(max(1, args.requests // (2 * chunks)))
            timings += sequential(url, body, max(1, args.requests // chunks), {})
        load_before = os.getloadavg()[0]
        # Interleaved rounds, so a slow spell of a shared machine hits every concurrency alike.
        rounds = [
            {c: throughput(url, body, c, args.seconds, process.pid) for c in (1, 8, 32)} for _ in range(args.repeats)
        ]
        memory = None
        if args.memory_requests:
            before = rss_mb(process.pid)
            failed = asyncio.run(_fixed(url, body, 32, args.memory_requests))
            after = rss_mb(process.pid)
            memory = {
                "rss_mb_before": round(before, 1),
                "rss_mb_after": round(after, 1),
                "requests": args.memory_requests,
                "failed": failed,
            }
        versus = None
        if args.peer:
            peer_process, peer_url = start_peer(work, Path(champion.path), serve.workers, env, body)
            try:
                versus = compare_with_peer(url, peer_url, body, work, args.seconds, args.repeats)
            finally:
                peer_process.terminate()
                peer_process.wait(timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=30)
    runs = {c: median_run([r[c] for r in rounds]) for c in (1, 8, 32)}
    inprocess = statistics.median(inprocess_timings)
    p50 = statistics.median(timings)
    result = {
        "p50_ms": round(p50, 2),
        "p95_ms": round(percentile(timings, 95), 2),
        "p99_ms": round(percentile(timings, 99), 2),
        "rps_c1": round(runs[1][0], 1),
        "rps_c8": round(runs[8][0], 1),
        "rps_c32": round(runs[32][0], 1),
        "inprocess_ms": round(inprocess, 2),
        "overhead_ratio": round(p50 / inprocess, 2),
        "rss_growth_percent": (
            round(100 * (memory["rss_mb_after"] / memory["rss_mb_before"] - 1), 2) if memory else None
        ),
        "memory": memory,
        "versus_peer": versus,
        "goals": GOALS,
        "rps_runs": {f"c{c}": [round(r[c][0], 1) for r in rounds] for c in (1, 8, 32)},
        "cpu_ms_per_request": {
            f"c{c}": {"server": round(server, 2), "load_generator": round(client, 2)}
            for c, (_, server, client) in runs.items()
        },
        "model": {"source": model_source, "tag": str(champion.tag)},
        "serve": serve.model_dump(),
        "requests": len(timings),
        "inprocess_samples": len(inprocess_timings),
        "seconds_per_throughput_run": args.seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_before_throughput": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
        "note": "load generator and server share the machine's cores; other work on the machine shows in the load average",  # noqa: E501
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
