"""Fusion heads: turn per-modality embeddings (absent ones already replaced) into class logits.

Every head has the same signature, `head(emb [B,M,D], aux [B,M,C], mask [B,M]) -> [B,C]`,
so the classifier, the training loop and serving never branch on the head. `aux` holds
the unimodal logits of the auxiliary heads; `mask` says which modalities are present.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.params.train import ArchParams


class ConcatHead(nn.Module):
    """Early fusion: concatenate the embeddings and classify with an MLP (absent -> learned missing embedding)."""

    def __init__(self, n_modalities: int, n_classes: int, arch: ArchParams) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(n_modalities * arch.embed_dim, arch.fusion_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(arch.dropout),
            nn.Linear(arch.fusion_hidden, n_classes),
        )

    def forward(self, emb: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(emb.flatten(1))


class LateHead(nn.Module):
    """Late fusion: a learned, positive weight per modality times its unimodal logits, summed over present ones.

    A sum rather than a normalised average on purpose: when modalities are conditionally
    independent given the label, the Bayes posterior is the sum of the unimodal
    log-posteriors (a product of experts). Dropping a modality then simply drops its term,
    which is exactly what a model trained on the remaining modalities would compute.
    """

    def __init__(self, n_modalities: int, n_classes: int, arch: ArchParams) -> None:
        super().__init__()
        self.log_weight = nn.Parameter(torch.zeros(n_modalities))

    def forward(self, emb: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        terms = torch.where(mask.unsqueeze(2), torch.log_softmax(aux, dim=2), 0.0)
        return torch.einsum("m,bmc->bc", self.log_weight.exp(), terms)


class GatedHead(nn.Module):
    """Gated attention: input-dependent weights over the present embeddings, then a classifier.

    Absent modalities get -inf scores, so their weight is exactly zero whatever they hold.
    """

    def __init__(self, n_modalities: int, n_classes: int, arch: ArchParams) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(arch.embed_dim, arch.fusion_hidden), nn.Tanh(), nn.Linear(arch.fusion_hidden, 1)
        )
        self.modality_bias = nn.Parameter(torch.zeros(n_modalities))
        self.classifier = nn.Sequential(
            nn.Linear(arch.embed_dim, arch.fusion_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(arch.dropout),
            nn.Linear(arch.fusion_hidden, n_classes),
        )

    def forward(self, emb: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (self.score(emb).squeeze(2) + self.modality_bias).masked_fill(~mask, float("-inf"))
        gate = torch.softmax(scores, dim=1)
        return self.classifier(torch.einsum("bm,bmd->bd", gate, emb))


class LowRankHead(nn.Module):
    """Low-rank multimodal fusion (LMF, Liu et al. 2018): the outer product of [emb, 1] per
    modality, projected through rank-`lmf_rank` factors without ever materialising the tensor."""

    def __init__(self, n_modalities: int, n_classes: int, arch: ArchParams) -> None:
        super().__init__()
        factors = torch.empty(n_modalities, arch.lmf_rank, arch.embed_dim + 1, arch.fusion_hidden)
        for m in range(n_modalities):
            for r in range(arch.lmf_rank):
                nn.init.xavier_normal_(factors[m, r])
        self.factors = nn.Parameter(factors)
        self.rank_weight = nn.Parameter(torch.full((arch.lmf_rank,), 1.0 / arch.lmf_rank))
        self.bias = nn.Parameter(torch.zeros(arch.fusion_hidden))
        self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(arch.dropout), nn.Linear(arch.fusion_hidden, n_classes))

    def forward(self, emb: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with_one = torch.cat([emb, emb.new_ones(emb.shape[0], emb.shape[1], 1)], dim=2)
        per_rank = torch.einsum("bmd,mrdh->bmrh", with_one, self.factors).prod(dim=1)
        return self.classifier(torch.einsum("r,brh->bh", self.rank_weight, per_rank) + self.bias)


HEADS: dict[str, type[nn.Module]] = {"concat": ConcatHead, "late": LateHead, "gated": GatedHead, "lmf": LowRankHead}
