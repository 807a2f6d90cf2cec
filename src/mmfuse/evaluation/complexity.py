"""Model complexity: parameters (deterministic) and timings/memory (measured, machine-dependent).

The measured numbers change from run to run, so they never enter the DVC metrics or plot
files (which must be byte-identical across runs); they go to the report only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmfuse.models.artifact import count_parameters
from mmfuse.models.classifier import MultimodalClassifier

_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _release_free_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc malloc_trim); False where that is not available.

    No `gc.collect()` here: `measure` collects once before its models (0.45 s a collection on
    the evaluate stage's heap, 3 s for seven models); a forward pass in inference mode frees
    its activations by reference count, leaving no cycles for a collection to find.
    """
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


def peak_inference_mib(model: MultimodalClassifier, batch: dict[str, torch.Tensor]) -> float | None:
    """Resident memory one forward pass adds at its peak, in MiB; None where it cannot be measured.

    tracemalloc cannot see torch's allocator, so this returns freed heap to the OS, resets
    the kernel's high-water mark (Linux: /proc/self/clear_refs) and reads VmHWM after the
    pass: the activations of that pass must fault fresh pages in. Precise to ~1-2 MiB.
    """
    if not _release_free_heap():
        return None
    try:
        _CLEAR_REFS.write_text("5")
        before = _status_kib("VmRSS")
        with torch.inference_mode():
            model(batch)
        peak = _status_kib("VmHWM")
    except OSError:
        return None
    if before is None or peak is None:
        return None
    return round(max(peak - before, 0) / 1024, 2)


def process_peak_rss_mib() -> float:
    """Peak resident memory of this whole process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _median_ms(model: MultimodalClassifier, batches: list[dict[str, torch.Tensor]]) -> float:
    with torch.inference_mode():
        model(batches[0])  # warm-up: first-call allocations and kernel selection
        times = []
        for batch in batches:
            started = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - started)
    return round(1000.0 * statistics.median(times), 3)


def latency_ms(
    model: MultimodalClassifier, tensors: dict[str, torch.Tensor], batch_size: int, repeats: int
) -> dict[str, float]:
    """Median wall time of one sample (`repeats` different samples) and of one batch of `batch_size`."""
    count = int(tensors["label"].shape[0])
    singles = [{k: v[i % count : i % count + 1] for k, v in tensors.items()} for i in range(repeats)]
    full = {k: v[:batch_size] for k, v in tensors.items()}
    return {
        "per_sample_ms": _median_ms(model, singles),
        "per_batch_ms": _median_ms(model, [full] * repeats),
        "batch_size": min(batch_size, count),
    }


def parameter_counts(models: dict[str, MultimodalClassifier]) -> dict[str, dict[str, float]]:
    """Parameters and float32 weight size (MiB) per model: the deterministic part of complexity."""
    return {
        name: {"parameters": count_parameters(model), "weights_mib": round(count_parameters(model) * 4 / 2**20, 3)}
        for name, model in models.items()
    }


def measure(
    models: dict[str, MultimodalClassifier],
    model_inputs: dict[str, dict[str, torch.Tensor]],
    batch_size: int,
    repeats: int,
) -> dict[str, Any]:
    """Per model: latency per sample and per batch, peak inference memory; plus the stage's own
    peak memory. `model_inputs[name]`: up to `batch_size` test rows the model is scored on.

    Training times are not read here: they live in the train stages' `metrics/train_*_time.json`,
    which no stage depends on, so a retrain to identical weights does not rerun evaluation.
    """
    gc.collect()  # what the stage left in cycles, once (see `_release_free_heap`)
    per_model = {}
    for name, model in models.items():
        inputs = model_inputs[name]
        per_model[name] = {
            **latency_ms(model, inputs, batch_size, repeats),
            "peak_inference_mib": peak_inference_mib(model, {k: v[:batch_size] for k, v in inputs.items()}),
            "threads": torch.get_num_threads(),
        }
    return {"models": per_model, "process_peak_rss_mib": process_peak_rss_mib()}
