"""Data sets: one abstraction, folder loaders and the embedded synthped generator."""

from benchmark.data.base import (
    DATASETS,
    DISTRACTOR_PID,
    JUNK_PID,
    Item,
    ReidDataset,
    SplitTensors,
    assert_identity_disjoint,
    build_dataset,
    load_image,
    load_images,
)

__all__ = ["DATASETS", "DISTRACTOR_PID", "JUNK_PID", "Item", "ReidDataset", "SplitTensors",
           "assert_identity_disjoint", "build_dataset", "load_image", "load_images"]
