"""The decoded splits of a run: loaded once from its data specification, hashed, identity-disjoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from benchmark.core.errors import BenchmarkError
from benchmark.core.training import split_fingerprint
from benchmark.data import ReidDataset, SplitTensors, assert_identity_disjoint, build_dataset
from benchmark.run.holdout import validation_dataset
from benchmark.run.spec import DataSpec, RunSpec

CROSS_DATASET_PID_OFFSET = 1_000_000



@dataclass
class Workspace:
    """Decoded splits of one run, loaded once and shared by training, attacks and evaluation."""

    dataset: ReidDataset
    train: SplitTensors
    query: SplitTensors
    gallery: SplitTensors
    train_name: str
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the run's images."""
        return tuple(self.query.images.shape[2:])  # type: ignore[return-value]


def _build(data: DataSpec, seed: int) -> ReidDataset:
    return build_dataset(data.name, data.root, seed=seed, options=data.options_object())


def load_workspace(spec: RunSpec) -> Workspace:
    """Load (or generate) the data of a run at the spec's input size and hash every split."""
    size = (spec.model.height, spec.model.width)
    test_ds = _build(spec.data, spec.data_seed)
    query = SplitTensors.from_items(test_ds.query, size)
    gallery = SplitTensors.from_items(test_ds.gallery, size)
    if spec.train_data is not None:
        train_ds = _build(spec.train_data, spec.data_seed)
        train = SplitTensors.from_items(train_ds.train, size)
        # Identities of two data sets are different people even when their numbers collide.
        train.pids = train.pids + CROSS_DATASET_PID_OFFSET
        train_name = spec.train_data.label
    else:
        train = SplitTensors.from_items(test_ds.train, size)
        train_name = spec.data.label
    if spec.split == "validation":  # tuning: score held-out training identities, never the test set
        if spec.train_data is not None:
            raise BenchmarkError("--split validation holds identities out of the test data set's own training split: "
                                 "drop --train-dataset")
        test_ds, train, query, gallery = validation_dataset(test_ds, train)
    assert_identity_disjoint({int(p) for p in train.pids if p > 0},
                             {int(p) for p in torch.cat([query.pids, gallery.pids]) if p > 0},
                             f"run on '{spec.data.name}'")
    digests = {name: split_fingerprint(split) for name, split in
               (("train", train), ("query", query), ("gallery", gallery))}
    return Workspace(test_ds, train, query, gallery, train_name, digests)


def subset_queries(ws: Workspace, index: torch.Tensor) -> Workspace:
    """`ws` with only the queries at `index` (gallery and training split whole); its query digest names the
    subset, so attack cells of the subset never pass for the whole query set's."""
    query = SplitTensors(ws.query.images[index], ws.query.pids[index], ws.query.camids[index])
    return dataclasses.replace(ws, query=query, digests={**ws.digests, "query": split_fingerprint(query)})
