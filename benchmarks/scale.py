"""How time and memory grow with the dataset: avdigits scaled to 10k, 50k and 100k samples.

For each size, a fresh clone of this repository (its committed state) in a scratch folder gets
`data.samples` = size / 2 in params.yaml (avdigits' clean twins double the samples), and then,
each step a separate process measured for wall time and peak RSS (the sum over the process
and its children, Dask workers and torchrun ranks included, sampled every 0.1 s):

- `dvc repro ingest`, then `dvc repro -s validate`;
- the preprocess stage with `preprocess.workers` 1, then 2 (`dvc repro -s [-f] preprocess`;
  the two outputs must be byte-identical);
- a no-op `dvc repro preprocess` (ingest, validate and preprocess all up to date: the stages
  whose inputs grow with the data; the model stages' deps do not), median of three;
- training: the audio model (the slowest encoder) for one epoch with params.yaml's `train:`
  settings, world size 1 and 2 (torchrun), samples/s as training reports it;
- evaluation: that model scored on the test split (`score_artifact`, as the evaluate and
  promote stages score models).

Needs the sources (`mmfuse fetch`, or $MMFUSE_DATA_MIRROR). Takes about 12 minutes for the
three sizes on 2 cores. Writes benchmarks/results/scale.json: per size and step the figures,
`rss_ratio_100k_over_10k` (the largest over steps of peak RSS at 100k / at 10k),
`preprocess_speedup_2_workers` (at the largest size), `noop_repro_s_10k` and `noop_repro_s_100k`.

    python benchmarks/scale.py [--sizes 10000 50000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from mmfuse.io import write_json

RESULT = Path("benchmarks/results/scale.json")
SAMPLE_EVERY_S = 0.1


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for member in [proc, *proc.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


def measured(command: list[str], cwd: Path, log: Path) -> dict:
    """Run `command` in `cwd` (output appended to `log`); its wall seconds and peak tree RSS in MB."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        start = time.perf_counter()
        proc = psutil.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.Error:
                pass
            time.sleep(SAMPLE_EVERY_S)
        seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def _set(params: Path, key: str, value: object) -> None:
    """Set one `  key: value` line of params.yaml (the first), keeping the rest byte for byte."""
    text, count = re.subn(rf"(?m)^(  {key}:) [^#\n]*?(\s*(#.*)?)$", rf"\g<1> {value}\g<2>", params.read_text(), 1)
    if not count:
        sys.exit(f"params.yaml has no '  {key}:' line")
    params.write_text(text)


def _processed_md5(project: Path) -> str:
    """The hash DVC recorded for data/processed when the preprocess stage last ran."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return lock["stages"]["preprocess"]["outs"][0]["md5"]


def _train(project: Path, world: int, log: Path) -> dict:
    root = project / f"bench-train-w{world}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    figures = measured([sys.executable, "benchmarks/scale.py", "--train", str(root), str(world)], project, log)
    result = json.loads((root / "result.json").read_text())
    return {**figures, "samples_per_second": result["samples_per_second"]}


def one_size(size: int, work: Path, repo: Path, logs: Path) -> dict:
    project = work / f"n{size}"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(project)], check=True)
    if (repo / "data" / "sources").is_dir():
        shutil.copytree(repo / "data" / "sources", project / "data" / "sources")
    params, log = project / "params.yaml", logs / f"n{size}.log"
    _set(params, "samples", size // 2)
    dvc = [sys.executable, "-m", "dvc"]
    steps: dict[str, dict] = {"ingest": measured([*dvc, "repro", "ingest"], project, log)}
    steps["validate"] = measured([*dvc, "repro", "-s", "validate"], project, log)
    _set(params, "workers", 1)
    steps["preprocess_1_worker"] = measured([*dvc, "repro", "-s", "preprocess"], project, log)
    one_worker = _processed_md5(project)
    _set(params, "workers", 2)
    steps["preprocess_2_workers"] = measured([*dvc, "repro", "-s", "-f", "preprocess"], project, log)
    if _processed_md5(project) != one_worker:
        sys.exit(f"{size} samples: 1 and 2 workers wrote different processed data")
    noop = [measured([*dvc, "repro", "preprocess"], project, log)["seconds"] for _ in range(3)]
    steps["train_world_1"] = _train(project, 1, log)
    steps["train_world_2"] = _train(project, 2, log)
    steps["evaluate"] = measured(
        [sys.executable, "benchmarks/scale.py", "--evaluate", str(project / "bench-train-w1" / "model")], project, log
    )
    counts = json.loads((project / "data" / "processed" / "meta.json").read_text())["counts"]
    media = project / "data" / "raw" / "avdigits" / "media"
    result = {
        "samples": size,
        "processed_counts": counts,
        "raw_files_tracked": sum(1 for p in (project / "data" / "raw").rglob("*") if p.is_file()),
        "media_shards": len(list(media.glob("shard-*.tar"))),
        "steps": steps,
        "noop_repro_s": statistics.median(noop),
        "noop_repro_all_runs_s": noop,
        "preprocess_speedup_2_workers": round(
            steps["preprocess_1_worker"]["seconds"] / steps["preprocess_2_workers"]["seconds"], 3
        ),
    }
    print(json.dumps(result, indent=2), flush=True)
    shutil.rmtree(project)
    return result


def _train_main(root: Path, world: int) -> None:
    """Inside the scaled project: one epoch of the audio model (torchrun ranks when world > 1)."""
    from mmfuse.params import load_params
    from mmfuse.training import distributed

    if not distributed.launched() and world > 1:
        sys.exit(distributed.launch(world, [__file__, "--train", str(root), str(world)]))
    from mmfuse.training.jobs import train_model

    params = load_params().train.model_copy(update={"world_size": world, "epochs": 1})
    with distributed.process_group():
        result = train_model(
            Path("data/processed"), root / "model", params, ("audio",), None, root / "ckpt", root / "curve.csv"
        )
        if distributed.is_main():
            (root / "result.json").write_text(json.dumps(result))


def _evaluate_main(model: Path) -> None:
    from mmfuse.evaluation.scoring import score_artifact
    from mmfuse.params import load_params

    print(json.dumps(score_artifact(model, Path("data/processed"), "test", None, load_params().evaluate)["accuracy"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--train", nargs=2, metavar=("ROOT", "WORLD"), help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", type=Path, metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        return _train_main(Path(args.train[0]), int(args.train[1]))
    if args.evaluate:
        return _evaluate_main(args.evaluate)
    repo = Path(__file__).resolve().parent.parent
    logs = Path(tempfile.mkdtemp(prefix="scale-bench-logs-"))
    print(f"command output: {logs}", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        sizes = {str(size): one_size(size, Path(tmp), repo, logs) for size in args.sizes}
    small, large = sizes[str(min(args.sizes))], sizes[str(max(args.sizes))]
    ratios = {
        step: round(large["steps"][step]["peak_rss_mb"] / small["steps"][step]["peak_rss_mb"], 3)
        for step in small["steps"]
    }
    result = {
        "rss_ratio_100k_over_10k": max(ratios.values()),
        "rss_ratio_by_step": ratios,
        "preprocess_speedup_2_workers": large["preprocess_speedup_2_workers"],
        "noop_repro_s_10k": sizes.get("10000", {}).get("noop_repro_s"),
        "noop_repro_s_100k": sizes.get("100000", {}).get("noop_repro_s"),
        "by_size": sizes,
        "cpus": os.cpu_count(),
        "rss_sampled_every_s": SAMPLE_EVERY_S,
    }
    write_json(RESULT, result)
    print(json.dumps({k: v for k, v in result.items() if k != "by_size"}, indent=2))


if __name__ == "__main__":
    main()
