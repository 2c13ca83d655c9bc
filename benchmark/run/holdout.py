"""Validation identities held out of a training split, so defenses are tuned without seeing a test identity.

`--split validation` trains on three quarters of the training identities and scores the fourth quarter
with the test protocol: each held-out identity seen in at least two cameras gives one query image in
each of up to two of its cameras, and every other image of it goes to the gallery, so every query
has a positive in another camera (Market-1501 ignores same-camera matches). Which identities are
held out is fixed (seed `HOLDOUT_SEED`), not the run's seed: every candidate of a search is scored
on the same people.
"""

from __future__ import annotations

import torch

from benchmark.data import ReidDataset, SplitTensors

HOLDOUT_FRACTION = 0.25
HOLDOUT_SEED = 0
QUERIES_PER_ID = 2


def subset(split: SplitTensors, index: torch.Tensor) -> SplitTensors:
    """The images of `split` at `index`."""
    return SplitTensors(split.images[index], split.pids[index], split.camids[index])


def hold_out(train: SplitTensors, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices into `train` of (the kept identities' training images, validation query, validation gallery)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.unique(train.pids)
    held = ids[torch.randperm(len(ids), generator=g)[: max(2, round(fraction * len(ids)))]]
    is_held = torch.isin(train.pids, held)
    queries: list[int] = []
    for pid in held.tolist():
        own = torch.nonzero(train.pids == pid).flatten()
        cams = torch.unique(train.camids[own])
        if len(cams) < 2:
            continue  # no cross-camera positive: its images stay in the gallery
        chosen: list[int] = []
        for cam in cams[torch.randperm(len(cams), generator=g)[:QUERIES_PER_ID]].tolist():
            in_cam = own[train.camids[own] == cam]
            trial = [*chosen, int(in_cam[torch.randint(len(in_cam), (1,), generator=g)])]
            rest = train.camids[own[~torch.isin(own, torch.tensor(trial))]]
            # every query keeps a gallery image of its identity in another camera
            if all(bool((rest != train.camids[q]).any()) for q in trial):
                chosen = trial
        queries += chosen
    is_query = torch.zeros(len(train), dtype=torch.bool)
    is_query[torch.tensor(queries, dtype=torch.long)] = True
    return (torch.nonzero(~is_held).flatten(), torch.nonzero(is_query).flatten(),
            torch.nonzero(is_held & ~is_query).flatten())


def validation_dataset(dataset: ReidDataset, train: SplitTensors) -> tuple[ReidDataset, SplitTensors, SplitTensors,
                                                                         SplitTensors]:
    """The data set as the validation protocol sees it (its items re-split, so reports name the right files)
    and its (train, query, gallery) tensors; `train` holds the tensors of `dataset.train`."""
    keep, query, gallery = hold_out(train)
    items = dataset.train
    view = ReidDataset(f"{dataset.name}:validation", [items[i] for i in keep.tolist()],
                       [items[i] for i in query.tolist()], [items[i] for i in gallery.tolist()])
    return view, subset(train, keep), subset(train, query), subset(train, gallery)
