"""The closed loop on avdigits: does retraining on harvested traffic fix a shift, without a restart?

    python benchmarks/closed_loop.py [--requests 1500] [--holdback 0.15] [--work DIR]

Run from the repository after `make setup` (it needs $MMFUSE_DATA_MIRROR or data/sources, and
the ingested default dataset under data/raw). Every step is the product's own, for real:

1. The world. A share (`--holdback`) of the avdigits train samples (with their clean twins) is
   held back from a copy of the dataset: they are the traffic of tomorrow, never trained on.
   Half of them are sent to be harvested ("traffic"), the other half only to measure ("later").
2. A project in a temporary git + DVC repository trains on the rest (`dvc repro`) and promotes its
   first champion into a model store of its own.
3. `mmfuse serve` answers "later" with the audio-noise shift (feedback on, no capture):
   `live_accuracy_before`. Then "traffic", shifted, captured, all labelled.
4. The monitoring flow (harvest, then the drift check) on a Prefect test server.
5. The drift-triggered training flow (`harvest=True`): a DVC experiment with the harvest in
   `data.extra`, promoting from the experiment (promote.from_experiments) if the gates pass.
6. The running server swaps the new champion in, while a client sends requests:
   `requests_failed_during_swap`.
7. "later" again, same requests, same noise: `live_accuracy_after`. The original test accuracies
   before and after are the promotion record's (champion and challenger, same test split).

Writes benchmarks/results/closed_loop.json with each step's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from mmfuse.data.manifest import read_manifest
from mmfuse.data.media import open_media
from mmfuse.io import write_json
from mmfuse.monitoring.traffic import simulate_traffic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIFT = "audio-noise"


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def split_world(raw_manifest: Path, dataset: Path, holdback: float, seed: int) -> tuple[Path, Path]:
    """Copy the ingested avdigits into `dataset` without a held-back share of train samples (and
    their twins); return the dataset's manifest and the held-back world's (splits traffic, later)."""
    frame = read_manifest(raw_manifest)
    base = frame["sample_id"].str.removesuffix("-clean")
    train = sorted(set(base[frame["split"].eq("train") & ~frame["sample_id"].str.endswith("-clean")]))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(train, size=round(len(train) * holdback), replace=False).tolist())
    shutil.copytree(raw_manifest.parent, dataset)
    kept = frame[~base.isin(held)]
    kept.to_csv(dataset / "manifest.csv", index=False, lineterminator="\n")
    world = frame[frame["sample_id"].isin(held)].copy()  # the degraded (hard) samples, as traffic arrives
    order = sorted(world["sample_id"])
    world["split"] = ["traffic" if k % 2 == 0 else "later" for k in range(len(order))]
    world_manifest = dataset.parent / "world" / "manifest.csv"
    world_manifest.parent.mkdir(parents=True)
    media = open_media(dataset)
    for rel in (*world["image"], *world["audio"]):
        (world_manifest.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (world_manifest.parent / rel).write_bytes(media.read(rel))
    world.to_csv(world_manifest, index=False, lineterminator="\n")
    return dataset / "manifest.csv", world_manifest


def start_server(project: Path, env: dict[str, str], port: int = 3031) -> subprocess.Popen:
    log = open(project / "server.log", "wb")  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "mmfuse.cli", "serve", "--port", str(port)], cwd=project, env=env, stdout=log, stderr=log
    )
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError((project / "server.log").read_text()[-3000:])


def live_accuracy(url: str, world: Path, split: str, n: int, capture: bool) -> dict[str, Any]:
    counts = simulate_traffic(url, world, n, SHIFT, seed=7, feedback=1.0, split=split, capture=capture)
    counts["accuracy"] = round(100 * counts["correct"] / max(counts["feedback"], 1), 2)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="harvested requests (the 'traffic' half)")
    parser.add_argument("--holdback", type=float, default=0.15, help="share of train samples held back as traffic")
    parser.add_argument("--work", type=Path, default=None, help="where the project goes (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmfuse-closed-loop-"))
    project = work / "project"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(work / "bentoml"),
        "MMFUSE_INFERENCE_LOG": str(work / "inference" / "log.sqlite"),
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    os.environ.update({k: env[k] for k in ("BENTOML_HOME", "MMFUSE_INFERENCE_LOG")})
    times: dict[str, float] = {}
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        times[step] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()
        print(f"{step}: {times[step]} s", flush=True)

    project.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    manifest, world = split_world(
        ROOT / "data" / "raw" / "avdigits" / "manifest.csv",
        project / "data" / "external" / "avdigits-base",
        args.holdback,
        args.seed,
    )
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["dataset"] = manifest.relative_to(project).as_posix()
    params["serve"].update(capture=False, reload_interval_s=2)  # only the "traffic" requests opt in (header)
    params["promote"]["from_experiments"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".gitignore").write_text("/src/**/__pycache__\n/server.log\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro"], ["git", "add", "-A"]):
        sh(cmd, project, env)
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "baseline"], project, env)
    lap("baseline_pipeline_s")

    from prefect.testing.utilities import prefect_test_harness

    from mmfuse.orchestration.monitoring import monitoring_flow
    from mmfuse.orchestration.training import training_flow

    later_n = int((read_manifest(world)["split"] == "later").sum())
    traffic_n = min(args.requests, int((read_manifest(world)["split"] == "traffic").sum()))
    server = start_server(project, env)
    url = "http://127.0.0.1:3031"
    result: dict[str, Any] = {"shift": SHIFT, "harvested_requests": traffic_n, "measured_requests": later_n}
    try:
        first = httpx.post(f"{url}/predict", data={"text": "one"}).json()["model_version"]
        before = live_accuracy(url, world, "later", later_n, capture=False)
        lap("traffic_before_s")
        sent = live_accuracy(url, world, "traffic", traffic_n, capture=True)
        result["harvest_traffic_accuracy"] = sent["accuracy"]
        lap("traffic_harvested_s")
        with prefect_test_harness(server_startup_timeout=90):
            check = monitoring_flow(project=str(project), trigger=lambda summary: "benchmark: retrain below")
            lap("monitoring_and_harvest_s")
            failures: list[int] = []
            stop = threading.Event()

            def steady() -> None:
                with httpx.Client(base_url=url, timeout=60) as http:
                    while not stop.is_set():
                        status = http.post("/predict", data={"text": "seven"}).status_code
                        failures.extend([status] if status != 200 else [])
                        time.sleep(0.1)

            client = threading.Thread(target=steady)
            client.start()
            training_flow(project=str(project), harvest=True)
            lap("retrain_s")
            decision = json.loads((project / "reports" / "promotion" / "decision.json").read_text())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if httpx.post(f"{url}/predict", data={"text": "one"}).json()["model_version"] != first:
                    break
                time.sleep(0.5)
            time.sleep(5)
            stop.set()
            client.join()
            lap("swap_s")
        after = live_accuracy(url, world, "later", later_n, capture=False)
        lap("traffic_after_s")
        served = httpx.post(f"{url}/predict", data={"text": "one"}).json()["model_version"]
    finally:
        server.terminate()
        server.wait()
    result.update(
        {
            "live_accuracy_before": before["accuracy"],
            "live_accuracy_after": after["accuracy"],
            "live_gain_points": round(after["accuracy"] - before["accuracy"], 2),
            "original_test_accuracy_before": (decision.get("champion") or {}).get("accuracy"),
            "original_test_accuracy_after": decision["challenger"]["accuracy"],
            "recent_traffic": decision.get("recent_traffic"),
            "verdict": decision["verdict"],
            "failed_gates": decision["failed_gates"],
            "requests_failed_during_swap": len(failures),
            "served_before": first,
            "served_after": served,
            "drift_status": check.get("status"),
            "harvest": {**check["harvest"], "path": Path(check["harvest"]["path"]).relative_to(project).as_posix()},
            "step_wall_s": times,
        }
    )
    write_json(RESULTS / "closed_loop.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("recent_traffic", "harvest")}, indent=2))


if __name__ == "__main__":
    main()
