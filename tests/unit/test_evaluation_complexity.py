"""Complexity measurements: memory of one pass, latency, training times from the train stage's file."""

from __future__ import annotations

import pytest
import torch

from mmfuse.evaluation.complexity import latency_ms, peak_inference_mib


class _Allocates(torch.nn.Module):
    """Stands in for a model whose forward pass needs `mib` MiB of activations."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.count = mib * 2**20 // 4

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones(self.count).sum() + batch["label"].sum()


def test_peak_memory_sees_the_activations_of_one_pass() -> None:
    batch = {"label": torch.zeros(4)}
    small, large = peak_inference_mib(_Allocates(1), batch), peak_inference_mib(_Allocates(64), batch)
    if small is None:
        pytest.skip("no /proc high-water mark or malloc_trim on this platform")
    assert large >= 60 > small


def test_latency_reports_medians_for_one_sample_and_one_batch() -> None:
    tensors = {"label": torch.arange(10)}
    result = latency_ms(_Allocates(1), tensors, batch_size=256, repeats=3)
    assert result["batch_size"] == 10 and result["per_sample_ms"] > 0 and result["per_batch_ms"] > 0
