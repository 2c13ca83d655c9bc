"""Data layer: parsers, loaders, synthped, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.core.errors import DataError
from benchmark.data import DATASETS, build_dataset, load_image
from benchmark.data.market import parse_market_name
from benchmark.data.synthped import SynthPedConfig, ensure_synthped
from tests.conftest import TINY_SYNTHPED, shared_data


def test_market_names():
    assert parse_market_name(Path("0002_c1s1_000451_03.jpg")) == (2, 1)
    assert parse_market_name(Path("-1_c3s2_000100_01.jpg")) == (-1, 3)
    assert parse_market_name(Path("0005_c2_f0046985.jpg")) == (5, 2)  # DukeMTMC-reID
    with pytest.raises(DataError, match="cannot parse file name 'x/abc.jpg'.*PPPP_cC"):
        parse_market_name(Path("x/abc.jpg"))


def test_real_market_crops_parse_and_load():
    folder = shared_data("market1501-sample") / "query"
    files = sorted(folder.glob("*.jpg"))
    assert [parse_market_name(f) for f in files] == [(1, 1), (1, 6)]
    img = load_image(files[0], (128, 64))
    assert img.shape == (3, 128, 64) and img.dtype == torch.uint8


def test_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-root"):
        build_dataset("market1501", tmp_path / "nope")
    with pytest.raises(DataError, match="needs --data-root"):
        build_dataset("pku")
    with pytest.raises(DataError, match="missing folder .*bounding_box_train"):
        build_dataset("market1501", tmp_path)
    with pytest.raises(DataError, match="missing list file"):
        build_dataset("msmt17", tmp_path)


def test_corrupt_image_names_its_path(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image '{bad}'"):
        load_image(bad, (128, 64))


def test_market_layout_loader(tmp_path):
    from PIL import Image

    levels = iter(range(10, 250, 20))  # every file differs: identical bytes would be dropped as copies
    for folder, names in {"bounding_box_train": ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"],
                          "query": ["0003_c1s1_000003_00.jpg"],
                          "bounding_box_test": ["0003_c2s1_000004_00.jpg", "0000_c1s1_000005_00.jpg",
                                                "-1_c1s1_000006_00.jpg"]}.items():
        (tmp_path / folder).mkdir()
        for n in names:
            level = next(levels)
            Image.new("RGB", (64, 128), color=(level, level, level)).save(tmp_path / folder / n)
    ds = build_dataset("market1501", tmp_path)
    assert ds.train_ids == {1} and ds.test_ids == {3}
    assert sorted(it.pid for it in ds.gallery) == [-1, 0, 3]


def _market(root: Path, query: dict[str, int], gallery: dict[str, int]) -> Path:
    """A tiny Market-1501 folder: file name -> grey level (equal levels make byte-identical files)."""
    from PIL import Image

    for folder, names in {"bounding_box_train": {"0001_c1s1_000001_00.png": 1, "0001_c2s1_000002_00.png": 2},
                          "query": query, "bounding_box_test": gallery}.items():
        (root / folder).mkdir(parents=True)
        for name, level in names.items():
            Image.new("RGB", (64, 128), color=(level, level, level)).save(root / folder / name)
    return root


def test_gallery_copies_of_query_images_are_left_out_with_a_warning(tmp_path, caplog):
    root = _market(tmp_path, {"0003_c1s1_000003_00.png": 30},
                   {"0003_c1s1_000099_00.png": 30, "0003_c2s1_000004_00.png": 40, "0000_c1s1_000005_00.png": 50})
    with caplog.at_level("WARNING", logger="benchmark.data"):
        ds = build_dataset("market1501", root)
    assert sorted(it.path.name for it in ds.gallery) == ["0000_c1s1_000005_00.png", "0003_c2s1_000004_00.png"]
    assert "1 gallery images are byte-identical copies of query images" in caplog.text


@pytest.mark.parametrize("query, gallery, message", [
    ({"0003_c1s1_000003_00.png": 30}, {"0003_c1s1_000004_00.png": 40}, "no query has a positive"),
    ({"12345678901234567890_c1s1_000003_00.png": 30}, {"12345678901234567890_c2s1_000004_00.png": 40},
     "identity 12345678901234567890 or camera 1 is outside"),
])
def test_market_folders_that_cannot_be_scored_are_refused(tmp_path, query, gallery, message):
    with pytest.raises(DataError, match=message):
        build_dataset("market1501", _market(tmp_path, query, gallery))


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the pixel data is a 1x1 image's): only a header check is safe."""
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [5000, 60000])
def test_huge_images_are_refused_from_their_header(tmp_path, side):
    path = _png_header_claiming(tmp_path / "0001_c1s1_000001_00.png", side, side)
    with pytest.raises(DataError, match="person crop|DecompressionBomb") as exc:
        load_image(path, (128, 64))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("lines, message", [
    ("0001_000_01_0303morning_0015_0.jpg abc\n", "label 'abc' is not an integer"),
    ("0001_000_01_0303morning_0015_0.jpg 99999999999999999999\n", "is not an integer"),
    ("", "lists no images"),
])
def test_msmt_list_files_with_bad_labels_are_refused(tmp_path, lines, message):
    for name in ("list_train.txt", "list_query.txt", "list_gallery.txt"):
        (tmp_path / name).write_text(lines)
    with pytest.raises(DataError, match=message):
        build_dataset("msmt17", tmp_path)


def test_pku_subset_split():
    root = shared_data("pku-reid-subset")
    ds = build_dataset("pku", root, seed=0)
    assert not ds.train_ids & ds.test_ids
    assert len(ds.train_ids) + len(ds.test_ids) == 74
    assert {it.camid for it in ds.query} == {1} and {it.camid for it in ds.gallery} == {2}
    names = [(it.pid, it.camid, it.path.name) for it in ds.train + ds.query + ds.gallery]
    assert len(names) == len(set(names))  # duplicates across val/query and val/gallery removed
    other = build_dataset("pku", root, seed=1)
    assert other.test_ids != ds.test_ids  # the split is seeded


def test_synthped_is_deterministic_and_realistic(tmp_path):
    cfg = SynthPedConfig(**{k: int(v) for k, v in TINY_SYNTHPED.items()})
    a = ensure_synthped(3, cfg, tmp_path / "a")
    b = ensure_synthped(3, cfg, tmp_path / "b")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a[:20])
    ds = DATASETS.get("synthped")(root=tmp_path / "a", seed=3, options=cfg)
    assert not ds.train_ids & ds.test_ids
    counts = np.bincount([it.pid for it in ds.train])
    counts = counts[counts > 0]
    assert counts.min() >= 2 and counts.max() <= 12
    assert len({it.camid for it in ds.train}) >= 4
    assert {0, -1} <= {it.pid for it in ds.gallery}  # distractors and junk


def test_default_synthped_meets_the_spec():
    cfg = SynthPedConfig()
    assert cfg.num_ids >= 200 and cfg.num_cams >= 4 and (cfg.height, cfg.width) == (128, 64)
    assert (cfg.min_images, cfg.max_images) == (2, 40)
