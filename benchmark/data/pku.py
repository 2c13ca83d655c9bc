"""PKU-Reid layout: <root>/**/<pid>/<cam>_<orient>.png, split by identity, cross-camera query/gallery."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.errors import DataError
from benchmark.core.options import option
from benchmark.data.base import DATASETS, Item, ReidDataset

_PKU_NAME = re.compile(r"^(\d+)_(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


def scan_pku(root: Path) -> list[Item]:
    """Every `<pid>/<cam>_<orient>.png` under root, de-duplicated by (pid, cam, orient) and content."""
    seen: set[tuple[int, str, str]] = set()
    digests: set[str] = set()
    items: list[Item] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
            continue
        match = _PKU_NAME.match(path.name)
        if match is None or not path.parent.name.isdigit():
            raise DataError(f"unexpected file '{path}': the PKU-Reid layout is <pid>/<cam>_<orient>.png, "
                            "e.g. 085/01_5.png")
        key = (int(path.parent.name), match.group(1), match.group(2))
        if key in seen:  # the published subset repeats files across val/query and val/gallery
            continue
        seen.add(key)
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest in digests:  # byte-identical copies would be free rank-1 hits
            continue
        digests.add(digest)
        items.append(Item(path, key[0], int(key[1])))
    if not items:
        raise DataError(f"no PKU-Reid images under '{root}': expected <pid>/<cam>_<orient>.png files")
    return items


@dataclass(frozen=True)
class PKUOptions:
    """The identity split and the query camera."""
    test_fraction: float = option(0.5, above=0, below=1)   # share of identities held out as unseen test identities
    query_cam: int = option(1, low=0, high=1000)           # query camera; the other cameras form the gallery


@DATASETS.register("pku", needs_root=True, layout="PKU-Reid <pid>/<cam>_<orient>.png", options=PKUOptions,
                   split="seeded identity split, half/half; query = camera 1, gallery = other cameras")
def pku(root: Path, seed: int = 0, options: PKUOptions | None = None) -> ReidDataset:
    """PKU-Reid with a seeded identity split (train / test) and a cross-camera query / gallery split."""
    options = options or PKUOptions()
    test_fraction, query_cam = options.test_fraction, options.query_cam
    items = scan_pku(root)
    pids = sorted({it.pid for it in items})
    if len(pids) < 4:
        raise DataError(f"'{root}' holds {len(pids)} identities; an identity split needs at least 4")
    shuffled = pids[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(2, round(len(pids) * test_fraction))
    test_ids = set(shuffled[:n_test])
    train = [it for it in items if it.pid not in test_ids]
    query = [it for it in items if it.pid in test_ids and it.camid == query_cam]
    gallery = [it for it in items if it.pid in test_ids and it.camid != query_cam]
    return ReidDataset("pku", train, query, gallery)
