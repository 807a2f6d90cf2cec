"""Data-parallel training on this machine: one process against two DDP ranks (torchrun, gloo).

Trains the audio model (the encoder with the most batch-norm work, and the slowest to train)
on the real processed data with params.yaml's `train:` settings, for each world size and
seed, and records training samples/s and val accuracy. One process uses train.threads
threads; two ranks share them (one each), so the comparison is at equal cores: what DDP
buys here is data parallelism in place of intra-op threads, minus one gradient all-reduce
per step. A third run, one process on one thread, is what each rank could do alone: twice
it is the ceiling of two ranks, and the shortfall from it is DDP's own cost.
Run after `dvc repro` (needs data/processed); takes about 12 minutes. Writes
benchmarks/results/ddp.json (`ddp_speedup_2_procs`, `accuracy_gap_points`).

    python benchmarks/ddp.py [--seeds 0 1] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mmfuse.io import write_json
from mmfuse.params import load_params
from mmfuse.params.train import TrainParams
from mmfuse.training import distributed
from mmfuse.training.jobs import train_model

RESULT = Path("benchmarks/results/ddp.json")
PROCESSED = Path("data/processed")


def _rank_main(root: Path, params: TrainParams) -> None:
    """One rank (or the only process): train the audio model; rank 0 writes its metrics."""
    with distributed.process_group():
        result = train_model(PROCESSED, root / "model", params, ("audio",), None, root / "ckpt", root / "curve.csv")
        if distributed.is_main():
            (root / "result.json").write_text(json.dumps(result))


def _run(world: int, seed: int, base: TrainParams, work: Path) -> dict:
    params = base.model_copy(update={"world_size": world, "seed": seed})
    root = work / f"w{world}-t{params.threads}-s{seed}"
    root.mkdir()
    target = [__file__, "--rank", str(root), params.model_dump_json()]
    code = distributed.launch(world, target) if world > 1 else subprocess.run([sys.executable, *target]).returncode
    if code:
        sys.exit(f"training with world size {world}, seed {seed} failed (exit {code})")
    result = json.loads((root / "result.json").read_text())
    print(f"world {world} seed {seed}: {result['samples_per_second']} samples/s, val {result['val_accuracy']} %")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="default: train.epochs")
    parser.add_argument("--rank", nargs=2, metavar=("ROOT", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        _rank_main(Path(args.rank[0]), TrainParams.model_validate_json(args.rank[1]))
        return
    if not (PROCESSED / "meta.json").exists():
        sys.exit("data/processed not found: run `dvc repro` first")
    base = load_params().train
    if args.epochs:
        base = base.model_copy(update={"epochs": args.epochs})
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        runs = {world: [_run(world, seed, base, Path(tmp)) for seed in args.seeds] for world in (1, 2)}
        one_thread = _run(1, args.seeds[0], base.model_copy(update={"threads": 1}), Path(tmp))
    speed = {w: statistics.mean(r["samples_per_second"] for r in rs) for w, rs in runs.items()}
    accuracy = {w: statistics.mean(r["val_accuracy"] for r in rs) for w, rs in runs.items()}
    ceiling = 2 * one_thread["samples_per_second"]
    result = {
        "ddp_speedup_2_procs": round(speed[2] / speed[1], 3),
        "one_process_one_thread_samples_per_second": one_thread["samples_per_second"],
        "two_ranks_share_of_their_ceiling": round(speed[2] / ceiling, 3),
        "accuracy_gap_points": round(accuracy[2] - accuracy[1], 3),
        "model": "audio",
        "seeds": args.seeds,
        "epochs": base.epochs,
        "batch_size": base.batch_size,
        "threads_in_all": base.threads,
        "by_world_size": {
            str(w): {
                "samples_per_second": [r["samples_per_second"] for r in rs],
                "val_accuracy": [r["val_accuracy"] for r in rs],
                "epochs_run": [r["epochs_run"] for r in rs],
            }
            for w, rs in runs.items()
        },
        "cpus": os.cpu_count(),
        "what_limits_it": (
            f"On these {os.cpu_count()} cores one process already runs train.threads = {base.threads} intra-op "
            f"threads ({speed[1]:.0f} samples/s; {one_thread['samples_per_second']:.0f} on one thread). Two ranks "
            "of one thread each trade that for data parallelism on the same cores, and each step adds a gloo "
            "all-reduce of every gradient plus DDP's search for unused parameters (a batch may lack a "
            f"modality): they reach {speed[2]:.0f} samples/s, {speed[2] / ceiling:.0%} of twice one thread. "
            "DDP pays on more cores or machines, where each rank brings cores of its own."
        ),
    }
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
