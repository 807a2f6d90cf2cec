"""The network: any-subset inference for every head, and the pieces it relies on."""

from __future__ import annotations

import pytest
import torch
from synthetic_data import FRAMES, IMAGE, MELS, N_CLASSES, TEXT_LEN, VOCAB, make_split

from mmfuse.modality import MODALITIES
from mmfuse.models.augment import augment_audio
from mmfuse.models.classifier import ModelSpec, MultimodalClassifier, nonempty_subsets
from mmfuse.models.determinism import deterministic
from mmfuse.models.encoders import UtteranceNorm
from mmfuse.params.train import FUSIONS, AugmentParams
from mmfuse.training.losses import drop_modalities


def _model(fusion: str, params, modalities=MODALITIES) -> MultimodalClassifier:
    torch.manual_seed(0)
    spec = ModelSpec(
        modalities=modalities,
        fusion=fusion,
        n_classes=N_CLASSES,
        vocab_size=VOCAB,
        arch=params.arch,
        shapes={"image": [1, IMAGE, IMAGE], "audio": [MELS, FRAMES], "text": [TEXT_LEN]},
    )
    return MultimodalClassifier(spec).eval()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_any_subset_ignores_the_content_of_absent_modalities(fusion: str, tiny_params) -> None:
    model = _model(fusion, tiny_params)
    batch = make_split(12, seed=5)
    other = make_split(12, seed=6)
    with torch.no_grad():
        for subset in nonempty_subsets(MODALITIES):
            mask = torch.tensor([m in subset for m in MODALITIES]).expand(12, 3).clone()
            scrambled = {m: (batch if m in subset else other)[m] for m in MODALITIES}
            scrambled["image"] = (
                scrambled["image"] if "image" in subset else torch.full_like(batch["image"], float("nan"))
            )
            reference = model({**batch, "mask": mask})
            assert torch.isfinite(reference).all()
            assert torch.equal(model({**scrambled, "mask": mask}), reference), subset
            # serving may simply leave an absent modality out of the request
            assert torch.equal(model({**{m: batch[m] for m in subset}, "mask": mask}), reference), subset


@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_sample_and_mixed_subsets_in_one_batch(fusion: str, tiny_params) -> None:
    """Per-sample masks: each row's output equals that row run alone (serving sends one sample)."""
    model = _model(fusion, tiny_params)
    batch = make_split(7, seed=3)
    batch["mask"] = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool
    )
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}) for i in range(7)])
    assert together.shape == (7, N_CLASSES)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_late_head_drops_exactly_the_absent_term(tiny_params) -> None:
    """Late fusion is a weighted sum of unimodal log-posteriors: removing a modality removes its term."""
    model = _model("late", tiny_params)
    batch = make_split(5, seed=1)
    batch["mask"][:] = True
    with torch.no_grad():
        present = model.presence(batch)
        emb = model.encode(batch, present)
        full, aux = model.fuse(emb, present)
        image_only, _ = model.fuse(emb, present & torch.tensor([True, False, False]))
    weight = model.head.log_weight.exp()
    torch.testing.assert_close(image_only, weight[0] * torch.log_softmax(aux[:, 0], dim=1))
    expected = sum(weight[i] * torch.log_softmax(aux[:, i], dim=1) for i in range(3))
    torch.testing.assert_close(full, expected)


def test_drop_modalities_keeps_at_least_one_present_modality() -> None:
    torch.manual_seed(0)
    present = torch.rand(2000, 3) < 0.6
    present[present.sum(1) == 0, 0] = True
    kept = drop_modalities(present, 0.9)
    assert (kept.sum(1) >= 1).all()
    assert not (kept & ~present).any()
    assert kept.float().mean() < present.float().mean()


def test_utterance_norm_ignores_padding_frames() -> None:
    clip = torch.randn(2, MELS, 10) * 3 + 5
    padded = torch.cat([torch.full((2, MELS, 6), -20.0), clip], dim=2)
    out = UtteranceNorm()(padded)
    assert torch.equal(out[:, :, :6], torch.zeros(2, MELS, 6))
    torch.testing.assert_close(out[:, :, 6:], UtteranceNorm()(clip))
    torch.testing.assert_close(out[:, :, 6:].mean(dim=2), torch.zeros(2, MELS), atol=1e-5, rtol=0)


def test_augment_audio_keeps_shape_and_masks_to_the_floor() -> None:
    torch.manual_seed(0)
    audio = make_split(16, seed=2)["audio"]
    out = augment_audio(audio, AugmentParams(time_shift=3, time_mask=4, freq_mask=2))
    assert out.shape == audio.shape
    assert (out.amin(dim=2) >= audio.amin(dim=2) - 1e-6).all()
    assert not torch.equal(out, audio)


def _put_twice() -> None:
    """`put_` to one index twice: an op PyTorch has no deterministic version of (even on CPU)."""
    torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))


def test_deterministic_refuses_nondeterministic_kernels_and_restores_the_previous_mode():
    threads = torch.get_num_threads()
    torch.set_deterministic_debug_mode("warn")
    try:
        with deterministic(1):
            assert torch.get_num_threads() == 1 and torch.get_deterministic_debug_mode() == 2
            with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
                _put_twice()
        assert torch.get_num_threads() == threads and torch.get_deterministic_debug_mode() == 1
    finally:
        torch.set_deterministic_debug_mode("default")
    _put_twice()
