"""The one data set abstraction: items (path, pid, camid) split into train / query / gallery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from benchmark.core.errors import DataError
from benchmark.core.registry import EntryInfo, Registry

JUNK_PID = -1
DISTRACTOR_PID = 0
#: a person crop is small; a larger image is refused from its header, before it is decoded (decompression bombs)
MAX_IMAGE_PIXELS = 4096 * 4096
#: labels are stored as int64 tensors and compared as Python ints: keep them far from any overflow
MAX_LABEL = 2**31 - 1


@dataclass(frozen=True)
class Item:
    """One image: its path, identity (0 distractor, -1 junk) and camera."""
    path: Path
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """A ReID data set with identity-disjoint train and test (query + gallery) splits."""

    name: str
    train: list[Item]
    query: list[Item]
    gallery: list[Item]

    def __post_init__(self) -> None:
        for split in ("train", "query", "gallery"):
            if not getattr(self, split):
                raise DataError(f"data set '{self.name}' has an empty {split} split; check --data-root (a folder "
                                "data set) or --dataset-opt (a generated one)")
        for split in ("train", "query", "gallery"):
            for it in getattr(self, split):
                if not (-1 <= it.pid <= MAX_LABEL and 0 <= it.camid <= MAX_LABEL):
                    raise DataError(f"'{it.path}': identity {it.pid} or camera {it.camid} is outside [-1, {MAX_LABEL}]"
                                    f" (a data set label must be a small integer); rename or remove the file")
        assert_identity_disjoint(self.train_ids, self.test_ids, f"data set '{self.name}'")
        if not any(scoreable_queries(self.query, self.gallery)):
            raise DataError(f"data set '{self.name}': no query has a positive (same identity, another camera) in "
                            "the gallery, so nothing can be scored; check the query and gallery folders")

    @property
    def train_ids(self) -> set[int]:
        """Identities of the training split (distractors and junk excluded)."""
        return {it.pid for it in self.train if it.pid > DISTRACTOR_PID}

    @property
    def test_ids(self) -> set[int]:
        """Identities of query and gallery (distractors and junk excluded)."""
        return {it.pid for it in self.query + self.gallery if it.pid > DISTRACTOR_PID}

    def summary(self) -> str:
        """One line: images and identities per split, cameras."""
        cams = {it.camid for it in self.train + self.query + self.gallery}
        return (f"{self.name}: train {len(self.train)} images / {len(self.train_ids)} IDs, "
                f"query {len(self.query)}, gallery {len(self.gallery)} / {len(self.test_ids)} test IDs, "
                f"{len(cams)} cameras")


def scoreable_queries(query: Sequence[Item], gallery: Sequence[Item]) -> list[bool]:
    """Per query: does the gallery hold its identity in another camera (the Market-1501 rule's valid query)?"""
    cameras: dict[int, set[int]] = {}
    for it in gallery:
        cameras.setdefault(it.pid, set()).add(it.camid)
    return [q.pid > DISTRACTOR_PID and bool(cameras.get(q.pid, set()) - {q.camid}) for q in query]


def assert_identity_disjoint(train_ids: set[int], test_ids: set[int], what: str) -> None:
    """Raise DataError when train and test identities overlap."""
    overlap = train_ids & test_ids
    if overlap:
        sample = sorted(overlap)[:5]
        raise DataError(f"{what}: {len(overlap)} identities are in both train and test (e.g. {sample}); "
                        "the protocol needs unseen test identities, fix the split")


DatasetFactory = Callable[..., ReidDataset]
@dataclass
class DatasetInfo(EntryInfo):
    """What `list datasets` and the loaders know of a data set."""

    #: False for a generated data set (no --data-root)
    needs_root: bool = True
    #: the folder layout it reads
    layout: str = ""
    #: the dataclass of its --dataset-opt options (None: it has none)
    options: type | None = None
    #: the embedded default data set
    default: bool = False
    #: how it splits identities into training, query and gallery
    split: str = ""


DATASETS: Registry[DatasetFactory] = Registry(
    "data set", builtin_modules=("benchmark.data.synthped", "benchmark.data.market", "benchmark.data.pku"),
    info=DatasetInfo)


def build_dataset(name: str, root: str | Path | None = None, seed: int = 0, options: Any = None) -> ReidDataset:
    """Build a registered data set; `options` is its typed options object (see `spec.DataSpec`), or None."""
    factory = DATASETS.get(name)
    needs_root = DATASETS.meta(name).needs_root
    if needs_root:
        if root is None:
            raise DataError(f"data set '{name}' needs --data-root pointing at its folder")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root '{root}' does not exist or is not a folder; pass the folder that "
                            f"holds the '{name}' data with --data-root")
    if options is None:
        options_cls = DATASETS.meta(name).options
        options = options_cls() if options_cls else None
    return factory(root=root, seed=seed, options=options)


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Read one RGB image as uint8 CHW resized to (height, width)."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(f"image '{path}' is {img.width}x{img.height} pixels, more than a person crop can be "
                                f"({MAX_IMAGE_PIXELS} pixels); it is not decoded: remove or shrink it")
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}' ({type(exc).__name__}); the file is corrupt or not an "
                        "image, remove or replace it") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_images(items: Sequence[Item], size: tuple[int, int]) -> torch.Tensor:
    """Stack the items' images into one uint8 N x 3 x H x W tensor (kept uint8 to save memory)."""
    out = torch.empty((len(items), 3, size[0], size[1]), dtype=torch.uint8)
    for i, it in enumerate(items):
        out[i] = load_image(it.path, size)
    return out


@dataclass
class SplitTensors:
    """Decoded images and labels of one split; images uint8, converted to [0, 1] floats on use."""

    images: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor

    @classmethod
    def from_items(cls, items: Sequence[Item], size: tuple[int, int]) -> SplitTensors:
        """Decode the items' images at `size` (height, width)."""
        return cls(load_images(items, size),
                   torch.tensor([it.pid for it in items], dtype=torch.long),
                   torch.tensor([it.camid for it in items], dtype=torch.long))

    def __len__(self) -> int:
        return len(self.pids)

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images (all, or `index`) as float in [0, 1]."""
        imgs = self.images if index is None else self.images[index]
        return imgs.float().div_(255.0)
