"""Which cleaning steps earn their place: measured on avdigits, written to JSON.

- Image denoiser and audio cleaning (silence trimming, spectral gating): each
  candidate's features feed a quick classifier (standardised features -> logistic
  regression); out-of-fold predictions over train+val (3 folds grouped by FSDD clip,
  so no clip is on both sides) are compared with doing nothing by McNemar's exact
  test, on the hard preset (the default data) and on the clean one. Image PSNR
  against the clean-preset image of the same MNIST digit is reported too.
- Rule: a candidate may cost at most COST_BUDGET_MS of CPU per item over doing
  nothing (the stage must keep 1,000 samples/s on two cores). The winner is the most
  accurate on hard among those significantly better there; if none is, the most
  accurate on clean among those significantly better on clean and not worse on hard;
  else nothing.
- Dedup: how far distinct images / clips are from their nearest neighbour in the
  other splits versus how far re-encoded, re-scaled or noisy copies move, which
  sets `preprocess.dedup.*_max_distance`.

Both presets are built from the mirror into a work folder (reused when present).
Run from the project root (43 minutes on the shared 2-core machine; slow because of the classifier fits):
    python benchmarks/denoise_choice.py [--sources ../shared/datasets] [--work .mmfuse-work/presets]
Writes benchmarks/results/denoise_choice.json.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly
from scipy.stats import binomtest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from mmfuse.data.avdigits import build_avdigits
from mmfuse.io import write_json
from mmfuse.params.data import DataParams
from mmfuse.params.preprocess import AudioParams, DedupParams, ImageParams
from mmfuse.preprocess.audio import audio_features, clean_audio, decode_audio, log_mel
from mmfuse.preprocess.dedup import nearest, signature
from mmfuse.preprocess.image import decode_image, image_features

RESULT = Path("benchmarks/results/denoise_choice.json")
PRESETS = ("hard", "clean")
IMAGE_CANDIDATES: dict[str, dict[str, Any]] = {
    "none": {"denoise": "none"},
    "median3": {"denoise": "median", "median_size": 3},
    "gaussian1.0": {"denoise": "gaussian", "gaussian_sigma": 1.0},
    "bilateral_r0.3": {"denoise": "bilateral", "bilateral_sigma_range": 0.3},
    "nlmeans_h0.15_s5": {"denoise": "nlmeans", "nlmeans_h": 0.15, "nlmeans_search": 5},
    "nlmeans_h0.15_s7": {"denoise": "nlmeans", "nlmeans_h": 0.15, "nlmeans_search": 7},
}
AUDIO_CANDIDATES: dict[str, dict[str, Any]] = {
    "none": {"trim": False, "denoise": False},
    "trim": {"trim": True, "denoise": False},
    "gate": {"trim": False, "denoise": True},
    "gate+trim": {"trim": True, "denoise": True},
}
TIME_BLOCKS = 10  # log-mel frames are averaged into this many blocks for the quick classifier
FOLDS = 3
SIGNIFICANCE = 0.05
COST_BUDGET_MS = 0.3
COST_SAMPLE = 300  # items timed (single process, CPU time, best of 3 rounds)


def _map(function: Callable, items: list, workers: int = 2) -> list:
    """Order-preserving parallel map over both cores."""
    chunk = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(function, items, chunksize=chunk))


def _image_job(job: tuple[str, dict[str, Any]]) -> np.ndarray:
    path, overrides = job
    return image_features(Path(path), ImageParams(**overrides)).ravel()


def _audio_job(job: tuple[str, dict[str, Any]]) -> np.ndarray:
    path, overrides = job
    features = audio_features(Path(path), AudioParams(**overrides))
    return features.reshape(features.shape[0], TIME_BLOCKS, -1).mean(axis=2).ravel()


def _out_of_fold_correct(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Which records a quick classifier gets right when they are held out (grouped folds)."""
    correct = np.zeros(len(labels), dtype=bool)
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    for fit, held in folds.split(features, labels, groups):
        scaler = StandardScaler().fit(features[fit])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # enough iterations to rank candidates
            model = LogisticRegression(max_iter=300, C=0.1).fit(scaler.transform(features[fit]), labels[fit])
        correct[held] = model.predict(scaler.transform(features[held])) == labels[held]
    return correct


def _cpu_ms(job: Callable, items: list) -> float:
    """CPU milliseconds per item in this process: best of 3 rounds (robust to a busy machine)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for item in items:
            job(item)
        best = min(best, time.process_time() - start)
    return 1000 * best / len(items)


def _mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar test on the paired right/wrong outcomes of two candidates."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _evaluate(
    candidates: dict[str, dict[str, Any]], job: Callable, column: str, roots: dict[str, Path], manifest: pd.DataFrame
) -> dict[str, Any]:
    """Accuracy of every candidate on every preset, its McNemar p against 'none', and the winner."""
    used = manifest["split"].isin(["train", "val"]).to_numpy()
    labels, groups = manifest["label"].to_numpy()[used], manifest["clip"].to_numpy()[used]
    paths = manifest[column].to_numpy()[used]
    scores: dict[str, dict[str, Any]] = {name: {"params": overrides} for name, overrides in candidates.items()}
    reference = None
    if column == "image":  # the undegraded digit, to measure PSNR of each denoiser's output on hard
        reference = np.stack(_map(job, [(str(roots["clean"] / p), {"denoise": "none"}) for p in paths]))
    for preset, root in roots.items():
        correct = {}
        for name, overrides in candidates.items():
            features = np.stack(_map(job, [(str(root / p), overrides) for p in paths]))
            correct[name] = _out_of_fold_correct(features, labels, groups)
            if reference is not None and preset == "hard":
                mse = np.mean((features - reference) ** 2, axis=1)
                scores[name]["hard_psnr_db_vs_clean"] = round(
                    float(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-12)))), 2
                )
        for name in candidates:
            scores[name][f"{preset}_accuracy"] = round(float(correct[name].mean()), 4)
            scores[name][f"{preset}_mcnemar_p_vs_none"] = float(f"{_mcnemar_p(correct[name], correct['none']):.2e}")
            print(column, preset, name, scores[name])
    timed = [str(roots["hard"] / p) for p in paths[:COST_SAMPLE]]
    base_ms = _cpu_ms(job, [(path, candidates["none"]) for path in timed])
    for name, overrides in candidates.items():
        scores[name]["extra_cpu_ms_per_item"] = round(_cpu_ms(job, [(path, overrides) for path in timed]) - base_ms, 3)

    def verdict(name: str, preset: str) -> int:
        """+1 significantly better than none, -1 significantly worse, 0 neither."""
        delta = scores[name][f"{preset}_accuracy"] - scores["none"][f"{preset}_accuracy"]
        return int(np.sign(delta)) if scores[name][f"{preset}_mcnemar_p_vs_none"] < SIGNIFICANCE else 0

    affordable = [n for n in candidates if n != "none" and scores[n]["extra_cpu_ms_per_item"] <= COST_BUDGET_MS]
    on_hard = [n for n in affordable if verdict(n, "hard") > 0]
    on_clean = [n for n in affordable if verdict(n, "hard") == 0 and verdict(n, "clean") > 0]
    if on_hard:
        winner = max(on_hard, key=lambda n: scores[n]["hard_accuracy"])
    elif on_clean:
        winner = max(on_clean, key=lambda n: scores[n]["clean_accuracy"])
    else:
        winner = "none"
    return {
        "candidates": scores,
        "winner": winner,
        "winner_gain_points": {
            p: round(100 * (scores[winner][f"{p}_accuracy"] - scores["none"][f"{p}_accuracy"]), 2) for p in roots
        },
        "most_accurate_on_hard": max(candidates, key=lambda n: scores[n]["hard_accuracy"]),
        "rule": __doc__.split("- Rule: ", 1)[1].split("\n- ", 1)[0].replace("\n  ", " ").strip(),
    }


Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # variant name -> (reference, variant)


def _image_variants(path: Path) -> Pairs:
    """Copies a near-duplicate measure should catch (or, for shift/bilinear, is known to miss)."""
    original = Image.open(path)
    grey = decode_image(path, ImageParams())
    variants = {}
    for quality in (95, 90, 75):
        buffer = io.BytesIO()
        original.save(buffer, "JPEG", quality=quality)
        variants[f"jpeg_q{quality}"] = decode_image(buffer.getvalue(), ImageParams())
    rng = np.random.default_rng(0)
    for levels in (1, 2):
        variants[f"noise_{levels}_levels"] = np.clip(grey + rng.normal(0, levels / 255, grey.shape), 0, 1)
    variants["contrast_0.8"] = np.clip(grey * 0.8 + 0.1, 0, 1)
    variants["enlarged_x2_repeat"] = np.kron(grey, np.ones((2, 2)))
    variants["enlarged_x2_bilinear"] = np.asarray(Image.fromarray(grey).resize((56, 56), Image.Resampling.BILINEAR))
    variants["shifted_1px"] = np.roll(grey, 1, axis=1)
    return {name: (grey, variant) for name, variant in variants.items()}


def _audio_variants(path: Path) -> Pairs:
    params = AudioParams()
    wave, rate = decode_audio(path, params)
    reference = log_mel(clean_audio(wave, rate, params), params)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, subtype="PCM_16", format="WAV")
    variants = {
        "gain_0.5": log_mel(clean_audio(wave * 0.5, rate, params), params),
        "pcm16": log_mel(clean_audio(*decode_audio(buffer.getvalue(), params), params), params),
        "resampled_16k": log_mel(clean_audio(resample_poly(wave, 2, 1).astype(np.float32), 16000, params), params),
    }
    return {name: (reference, variant) for name, variant in variants.items()}


def _variant_distances(paths: list[Path], make: Callable[[Path], Pairs], grid: int) -> dict[str, float]:
    worst: dict[str, float] = {}
    for path in paths:
        for name, (reference, variant) in make(path).items():
            distance = float(1.0 - signature(reference, grid) @ signature(variant, grid))
            worst[name] = max(worst.get(name, 0.0), distance)
    return {name: float(f"{value:.2e}") for name, value in worst.items()}


def _signature_job(job: tuple[str, str]) -> np.ndarray:
    kind, path = job
    grid = DedupParams().grid
    if kind == "image":
        return signature(decode_image(Path(path), ImageParams()), grid)
    params = AudioParams()
    wave, rate = decode_audio(Path(path), params)
    return signature(log_mel(clean_audio(wave, rate, params), params), grid)


def measure_dedup(roots: dict[str, Path], manifest: pd.DataFrame) -> dict[str, Any]:
    params = DedupParams()
    train = manifest["split"].to_numpy() == "train"
    out: dict[str, Any] = {"params": params.model_dump()}
    for preset, root in roots.items():
        for kind in ("image", "audio"):
            signatures = np.stack(_map(_signature_job, [(kind, str(root / p)) for p in manifest[kind]]))
            distances, _ = nearest(signatures[train], signatures[~train])
            limit = params.image_max_distance if kind == "image" else params.audio_max_distance
            sample = [root / p for p in manifest[kind][:40]]
            out[f"{preset}_{kind}"] = {
                "train_to_val_test_nearest_distance_percentiles_0_0.1_1_50": [
                    float(f"{v:.2e}") for v in np.percentile(distances, [0, 0.1, 1, 50])
                ],
                "train_records_within_threshold": int(np.sum(distances <= limit)),
                "worst_distance_of_copies_of_40": _variant_distances(
                    sample, _image_variants if kind == "image" else _audio_variants, params.grid
                ),
            }
            print("dedup", preset, kind, out[f"{preset}_{kind}"])
    return out


def _ensure_preset(sources: Path, work: Path, preset: str) -> Path:
    """The preset built into `work`, its packed media unpacked beside the manifest (the jobs read files)."""
    folder = work / preset
    if not (folder / "manifest.csv").is_file():
        build_avdigits(sources, folder, DataParams(preset=preset))
        for shard in sorted((folder / "media").glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                tar.extractall(folder, filter="data")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path(".mmfuse-work/presets"))
    args = parser.parse_args()
    roots = {preset: _ensure_preset(args.sources, args.work, preset) for preset in PRESETS}
    manifest = pd.read_csv(roots["hard"] / "manifest.csv", dtype=str, keep_default_na=False)
    if not pd.read_csv(roots["clean"] / "manifest.csv", dtype=str)["sample_id"].equals(manifest["sample_id"]):
        raise SystemExit("the clean and hard presets must come from the same sources and seed")
    start = time.perf_counter()
    result = {
        "method": {
            "records": int(manifest["split"].isin(["train", "val"]).sum()),
            "evaluation": f"out-of-fold over train+val, {FOLDS} folds grouped by FSDD clip",
            "classifier": "StandardScaler + LogisticRegression(C=0.1, max_iter=300)",
            "audio_features": f"log-mel averaged into {TIME_BLOCKS} time blocks",
            "significance": SIGNIFICANCE,
            "cost_budget_ms": COST_BUDGET_MS,
        },
        "image_denoise": _evaluate(IMAGE_CANDIDATES, _image_job, "image", roots, manifest),
        "audio_cleaning": _evaluate(AUDIO_CANDIDATES, _audio_job, "audio", roots, manifest),
        "dedup": measure_dedup(roots, manifest),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(RESULT, result)
    print(
        json.dumps(
            {
                key: {k: v for k, v in result[key].items() if k != "candidates"}
                for key in ("image_denoise", "audio_cleaning")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
