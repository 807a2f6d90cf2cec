"""The multimodal classifier: one encoder per modality, a learned "missing" embedding, a fusion head.

One class serves unimodal baselines, pairs and the full fusion model, so every subset's
dedicated reference is trained and served by the same code. The forward takes the batch
dict of the processed-split contract (`image`, `audio`, `text`, `mask`) and accepts any
non-empty subset of modalities per sample: an absent modality's encoder output is never
used (its rows are not even encoded), the learned missing embedding stands in for it.
"""

from __future__ import annotations

from itertools import combinations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mmfuse.modality import MODALITIES
from mmfuse.models.encoders import build_encoder
from mmfuse.models.fusion import HEADS
from mmfuse.params.train import ArchParams, Fusion


class ModelSpec(BaseModel):
    """Everything that fixes the network's shape; stored in config.json so load_model can rebuild it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: tuple[str, ...] = Field(min_length=1)
    fusion: Fusion
    n_classes: int = Field(ge=2)
    shapes: dict[str, list[int]]
    vocab_size: int = Field(ge=2)
    arch: ArchParams

    @model_validator(mode="after")
    def _known(self) -> "ModelSpec":
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names among {MODALITIES}, got {self.modalities}")
        if tuple(m for m in MODALITIES if m in self.modalities) != self.modalities:
            raise ValueError(f"modalities must follow the mask order {MODALITIES}, got {self.modalities}")
        missing = [m for m in self.modalities if m not in self.shapes]
        if missing:
            raise ValueError(f"no input shape for {missing}")
        return self


def subset_name(modalities: tuple[str, ...]) -> str:
    """'image+audio' style name of a modality subset (mask order), used for folders and metric keys."""
    return "+".join(modalities)


def nonempty_subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """All non-empty subsets, singletons first, in mask order."""
    return [combo for size in range(1, len(modalities) + 1) for combo in combinations(modalities, size)]


class MultimodalClassifier(nn.Module):
    """Encoders -> (missing embedding where absent) -> fusion head; plus one auxiliary linear head per modality.

    The auxiliary heads are each modality's own classifier: in a unimodal model the only
    one, in staged training adopted (frozen) from the unimodal models, in joint training
    trained by their own losses so the fastest-learning modality cannot starve the others.
    They also measure each modality's strength inside the fused model.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        arch = spec.arch
        self.columns = [MODALITIES.index(m) for m in spec.modalities]
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(m, getattr(arch, m), spec.shapes[m], arch.embed_dim, spec.vocab_size, arch.token_dim)
                for m in spec.modalities
            }
        )
        self.missing = nn.Parameter(torch.zeros(len(spec.modalities), arch.embed_dim))
        self.dropout = nn.Dropout(arch.dropout)
        self.aux_heads = nn.ModuleList(nn.Linear(arch.embed_dim, spec.n_classes) for _ in spec.modalities)
        self.head = HEADS[spec.fusion](len(spec.modalities), spec.n_classes, arch)

    @property
    def frozen(self) -> bool:
        """True once `adopt_encoders` has frozen the encoders: only the fusion part still learns."""
        return not any(p.requires_grad for p in self.encoders.parameters())

    def adopt_encoders(self, unimodal: dict[str, "MultimodalClassifier"]) -> None:
        """Take over the encoder and classifier of each modality's unimodal model, frozen.

        Staged training (the G-Blend remedy for modality imbalance): each encoder has already
        reached its own optimum alone, so no modality can starve another, and the model with a
        modality subset keeps exactly the unimodal experts of the dedicated models.
        """
        for i, m in enumerate(self.spec.modalities):
            source = unimodal[m]
            self.encoders[m].load_state_dict(source.encoders[m].state_dict())
            self.aux_heads[i].load_state_dict(source.aux_heads[0].state_dict())
        for module in (self.encoders, self.aux_heads):
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultimodalClassifier":
        """Frozen encoders stay in eval mode while the fusion part trains (fixed batch-norm statistics)."""
        super().train(mode)
        if self.frozen:
            self.encoders.eval()
        return self

    def presence(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M] bool: which of this model's modalities each sample carries (a missing key means absent)."""
        mask = batch["mask"][:, self.columns].bool()
        present = torch.tensor([m in batch for m in self.spec.modalities], device=mask.device)
        return mask & present

    def encode(self, batch: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """[B, M, D] embeddings; rows where a modality is absent hold its learned missing embedding."""
        size = present.shape[0]
        embeddings = []
        for i, m in enumerate(self.spec.modalities):
            missing = self.missing[i].expand(size, -1)
            rows = present[:, i]
            if bool(rows.all()):
                embeddings.append(self.encoders[m](batch[m]))
            elif bool(rows.any()):
                index = rows.nonzero().squeeze(1)
                embeddings.append(missing.index_copy(0, index, self.encoders[m](batch[m][index])))
            else:
                embeddings.append(missing)
        return torch.stack(embeddings, dim=1)

    def fuse(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused logits [B, C], auxiliary unimodal logits [B, M, C]) for the modalities in `mask`.

        Separate from `encode` so the embeddings of one batch can be fused under several
        masks (every subset at validation) and under modality dropout in training. The
        auxiliary heads read the embeddings as encoded (a modality hidden by `mask` still
        gets its unimodal logits, so its encoder keeps learning under modality dropout);
        only the fusion head sees the missing embedding in place of a hidden modality.
        """
        emb = self.dropout(emb)
        aux = torch.stack([head(emb[:, i]) for i, head in enumerate(self.aux_heads)], dim=1)
        return self.head(torch.where(mask.unsqueeze(2), emb, self.missing.unsqueeze(0)), aux, mask), aux

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, C] from whatever modalities each sample carries (at least one per sample)."""
        present = self.presence(batch)
        return self.fuse(self.encode(batch, present), present)[0]
