"""Folder loaders for Market-1501, DukeMTMC-reID (same naming) and MSMT17 (list files)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from benchmark.core.errors import DataError
from benchmark.data.base import DATASETS, Item, ReidDataset

# Market: 0002_c1s1_000451_03.jpg, junk -1_c1s1_..., Duke: 0005_c2_f0046985.jpg
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
log = logging.getLogger("benchmark.data")


def parse_market_name(path: Path) -> tuple[int, int]:
    """Return (pid, camid) from a Market/Duke file name; camid as written (1-based)."""
    match = _MARKET_NAME.match(path.name)
    if match is None:
        raise DataError(f"cannot parse file name '{path}': expected Market/Duke naming "
                        "'PPPP_cC...' such as 0002_c1s1_000451_03.jpg")
    return int(match.group(1)), int(match.group(2))


def _scan_market_folder(folder: Path) -> list[Item]:
    if not folder.is_dir():
        raise DataError(f"missing folder '{folder}': a Market-style data root holds bounding_box_train/, "
                        "query/ and bounding_box_test/")
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        pid, camid = parse_market_name(path)
        items.append(Item(path, pid, camid))
    if not items:
        raise DataError(f"folder '{folder}' holds no images (.jpg/.png)")
    return items


def load_market_layout(root: Path, name: str) -> ReidDataset:
    """A data set from Market-1501 folders (bounding_box_train, query, bounding_box_test)."""
    train = [it for it in _scan_market_folder(root / "bounding_box_train") if it.pid >= 0]
    query = _scan_market_folder(root / "query")
    gallery = _without_copies_of(query, _scan_market_folder(root / "bounding_box_test"), name)
    return ReidDataset(name, train, query, gallery)


def _without_copies_of(query: list[Item], gallery: list[Item], name: str) -> list[Item]:
    """The gallery less byte-identical copies of query images, which would be free rank-1 hits (with a warning)."""
    def digest(path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    query_sizes = {it.path.stat().st_size for it in query}
    candidates = [it for it in gallery if it.path.stat().st_size in query_sizes]  # only same-size files can match
    if not candidates:
        return gallery
    query_digests = {digest(it.path) for it in query}
    copies = {it.path for it in candidates if digest(it.path) in query_digests}
    if copies:
        log.warning("%s: %d gallery images are byte-identical copies of query images (free rank-1 hits); left "
                    "out of the gallery", name, len(copies))
    return [it for it in gallery if it.path not in copies]


@DATASETS.register("market1501", needs_root=True, layout="Market-1501 folders")
def market1501(root: Path, seed: int = 0, options: object = None) -> ReidDataset:
    """Market-1501 from its folder."""
    return load_market_layout(root, "market1501")


@DATASETS.register("dukemtmc", needs_root=True, layout="DukeMTMC-reID folders (Market naming)")
def dukemtmc(root: Path, seed: int = 0, options: object = None) -> ReidDataset:
    """DukeMTMC-reID from its folder (Market naming)."""
    return load_market_layout(root, "dukemtmc")


def _read_msmt_list(root: Path, list_name: str, image_dir: str) -> list[Item]:
    list_file = root / list_name
    if not list_file.is_file():
        raise DataError(f"missing list file '{list_file}': an MSMT17 root holds train/, test/ and "
                        "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt")
    items = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{list_file}:{line_no}: expected '<relative path> <pid>', got '{line}'")
        rel, pid = parts
        if not re.fullmatch(r"-?\d{1,9}", pid):
            raise DataError(f"{list_file}:{line_no}: the label '{pid}' is not an integer identity; expected "
                            "'<relative path> <pid>'")
        name_fields = Path(rel).name.split("_")
        if len(name_fields) < 3 or not name_fields[2].isdigit():
            raise DataError(f"{list_file}:{line_no}: cannot read the camera from '{rel}', expected "
                            "MSMT17 naming <pid>_<index>_<cam>_...")
        items.append(Item(root / image_dir / rel, int(pid), int(name_fields[2])))
    if not items:
        raise DataError(f"list file '{list_file}' lists no images; expected lines '<relative path> <pid>'")
    return items


@DATASETS.register("msmt17", needs_root=True, layout="MSMT17 list files")
def msmt17(root: Path, seed: int = 0, options: object = None) -> ReidDataset:
    """MSMT17 from its list files; test identities shifted past the training ones."""
    train = _read_msmt_list(root, "list_train.txt", "train")
    if (root / "list_val.txt").is_file():
        train += _read_msmt_list(root, "list_val.txt", "train")
    query = _read_msmt_list(root, "list_query.txt", "test")
    gallery = _read_msmt_list(root, "list_gallery.txt", "test")
    # MSMT17 numbers test identities from 0 again: shift them so train and test pids are disjoint.
    offset = max(it.pid for it in train) + 1
    query = [Item(it.path, it.pid + offset, it.camid) for it in query]
    gallery = [Item(it.path, it.pid + offset, it.camid) for it in gallery]
    return ReidDataset("msmt17", train, query, gallery)
