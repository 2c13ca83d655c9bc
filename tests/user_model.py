"""A user's embedding model, as a researcher would bring one: an nn.Module and a factory function.

It computes what the benchmark's reidnet-s ReID model computes at test time, so its scores can be
compared with the same weights trained and evaluated through `run`.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.models import ModelConfig, ReidModel

TRAIN_IDS = 20  # training identities of the tiny synthped (classifier rows of the trained checkpoint)


class UserEmbedder(nn.Module):
    """Images in [0, 1] -> embeddings, normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ReidModel(ModelConfig("reidnet-s", TRAIN_IDS, 64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


def build() -> nn.Module:
    """The factory `--model tests.user_model:build` calls."""
    return UserEmbedder()
