"""synthped: procedurally generated pedestrians, the embedded default data set.

Identity lives in the person (clothing colours and textures, hair and skin tone, bag, body
proportions); cameras change background, illumination and colour cast, scale, viewpoint, blur,
noise and occlusion. Images per identity are long-tailed and some identities are dominated by one
camera, as in real ReID data, so DDID's balancing phase has work to do. Everything is
deterministic from the seed; images are written once in Market-1501 naming and reused.
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from filelock import FileLock
from PIL import Image, ImageFilter

from benchmark.core.atomic import atomic_folder, atomic_write_text, remove_folder
from benchmark.core.errors import BenchmarkError
from benchmark.core.hashing import file_digests, fingerprint, manifest_intact
from benchmark.core.options import option
from benchmark.core.paths import cache_dir
from benchmark.data.base import DATASETS, ReidDataset
from benchmark.data.market import load_market_layout

log = logging.getLogger("benchmark")

VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class SynthPedConfig:
    """Size and structure of the generated data set (every field is a --dataset-opt)."""
    num_ids: int = option(200, low=4, high=100_000)
    num_cams: int = option(6, low=2, high=1000)
    height: int = option(128, low=16, high=1024)
    width: int = option(64, low=16, high=1024)
    min_images: int = option(2, low=2, high=1000)
    max_images: int = option(40, low=2, high=1000)
    #: n_i = min + (max - min) * u**power: long tail of small IDs
    tail_power: float = option(3.0, above=0, high=100)
    #: share of IDs whose images mostly come from one camera
    dominant_fraction: float = option(0.3, low=0, high=1)
    max_queries_per_id: int = option(2, low=1, high=1000)
    #: pid 0 gallery images of people outside the ID set
    distractors: int = option(60, low=0, high=100_000)
    #: pid -1 gallery images (bad crops), ignored by the evaluator
    junk: int = option(20, low=0, high=100_000)
    version: ClassVar[int] = 1       # bump when rendering changes so caches are rebuilt

    def __post_init__(self) -> None:
        # each field's own range is declared with it (and checked when the options are parsed)
        if self.min_images > self.max_images:
            raise BenchmarkError(f"data set 'synthped': min_images={self.min_images} must be at most max_images="
                                 f"{self.max_images} (--dataset-opt)")

    def digest(self, seed: int) -> str:
        """Short hash of the configuration and seed (the cache folder's name)."""
        return fingerprint({"seed": seed, "version": self.version, **asdict(self)}, 12)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@dataclass
class Person:
    """What makes an identity: clothing, body, hair, bag."""
    upper: np.ndarray
    upper2: np.ndarray
    upper_pattern: int   # 0 solid, 1 h-stripes, 2 v-stripes, 3 checks, 4 two-tone
    period: int
    lower: np.ndarray
    shorts: bool
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    bag: int             # 0 none, 1 backpack, 2 shoulder bag
    bag_color: np.ndarray
    shoes: np.ndarray
    width: float
    height: float
    sleeves_long: bool


def random_person(rng: np.random.Generator) -> Person:
    """A random identity."""
    skin_v = rng.uniform(0.35, 0.95)
    hair_tone = rng.choice([0.08, 0.15, 0.3, 0.55, 0.75])
    return Person(
        upper=_hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.95)),
        upper2=_hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 0.95)),
        upper_pattern=int(rng.choice(5, p=[0.4, 0.2, 0.15, 0.1, 0.15])),
        period=int(rng.integers(3, 9)),
        lower=_hsv(rng.random(), rng.uniform(0.05, 0.7), rng.uniform(0.1, 0.8)),
        shorts=bool(rng.random() < 0.25),
        skin=np.array([skin_v, skin_v * 0.78, skin_v * 0.62], dtype=np.float32),
        hair=np.array([hair_tone * 1.1, hair_tone * 0.9, hair_tone * 0.7], dtype=np.float32).clip(0, 1),
        long_hair=bool(rng.random() < 0.35),
        bag=int(rng.choice(3, p=[0.5, 0.3, 0.2])),
        bag_color=_hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 0.8)),
        shoes=_hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.9)),
        width=float(rng.uniform(0.85, 1.18)),
        height=float(rng.uniform(0.88, 1.0)),
        sleeves_long=bool(rng.random() < 0.6),
    )


@dataclass
class Camera:
    """What a camera changes: background, light, scale, blur, noise."""
    wall: np.ndarray
    floor: np.ndarray
    clutter: list[tuple[float, float, float, float, np.ndarray]]
    gain: float
    cast: np.ndarray
    scale: float
    blur: float
    noise: float
    view_prior: np.ndarray


def random_camera(rng: np.random.Generator) -> Camera:
    """A random camera."""
    clutter = [(rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.6),
                _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))) for _ in range(4)]
    return Camera(
        wall=_hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.9)),
        floor=_hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.7)),
        clutter=clutter,
        gain=float(rng.uniform(0.6, 1.25)),
        cast=rng.uniform(0.8, 1.2, size=3).astype(np.float32),
        scale=float(rng.uniform(0.72, 0.95)),
        blur=float(rng.uniform(0.0, 1.3)),
        noise=float(rng.uniform(0.01, 0.05)),
        view_prior=rng.dirichlet(np.ones(4) * 1.5),
    )


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(yy: np.ndarray, xx: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _pattern(p: Person, yy: np.ndarray, xx: np.ndarray, top: float) -> np.ndarray:
    """Mask of where the secondary upper-body colour shows."""
    ry, rx = (yy - top).astype(int), xx.astype(int)
    if p.upper_pattern == 1:
        return (ry // p.period) % 2 == 1
    if p.upper_pattern == 2:
        return (rx // p.period) % 2 == 1
    if p.upper_pattern == 3:
        return ((ry // p.period) + (rx // p.period)) % 2 == 1
    if p.upper_pattern == 4:
        return ry > p.period * 2.5
    return np.zeros_like(yy, dtype=bool)


def render(person: Person, cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Render one pedestrian crop as uint8 H x W x 3."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.55, 0.7)
    img = np.where((yy < horizon)[..., None], cam.wall, cam.floor).astype(np.float32)
    img *= (0.85 + 0.3 * yy / height)[..., None]
    for cx, cy, w, h, color in cam.clutter:
        jitter = rng.uniform(-0.08, 0.08)
        img[_box(yy, xx, cy * height, (cy + h) * height, (cx + jitter - w / 2) * width,
                 (cx + jitter + w / 2) * width)] = color

    view = VIEWS[rng.choice(4, p=cam.view_prior)]
    h = height * cam.scale * person.height * rng.uniform(0.93, 1.05)
    top = (height - h) * rng.uniform(0.2, 0.8)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    side = view in ("left", "right")
    half_w = 0.16 * h * person.width * (0.7 if side else 1.0)
    stride = rng.uniform(0.0, 0.09) * h

    def y(f: float) -> float:
        return top + f * h

    # legs, shoes
    leg_w = half_w * 0.42
    for sign in (-1.0, 1.0):
        lx = cx + sign * (half_w * 0.45 if not side else stride * 0.8)
        legs = _box(yy, xx, y(0.5), y(0.93), lx - leg_w, lx + leg_w)
        img[legs] = person.lower
        if person.shorts:
            img[legs & (yy > y(0.66))] = person.skin
        img[_box(yy, xx, y(0.93), y(0.985), lx - leg_w * 1.1, lx + leg_w * 1.3)] = person.shoes
    # arms
    arm_w = half_w * 0.28
    arm_dx = [] if side else [-1.0, 1.0]
    for sign in arm_dx:
        ax = cx + sign * (half_w + arm_w * 0.9)
        arm = _box(yy, xx, y(0.18), y(0.52), ax - arm_w, ax + arm_w)
        img[arm] = person.skin
        img[arm & (yy < (y(0.5) if person.sleeves_long else y(0.3)))] = person.upper
    # torso with texture
    torso = _box(yy, xx, y(0.17), y(0.52), cx - half_w, cx + half_w)
    img[torso] = person.upper
    img[torso & _pattern(person, yy, xx, y(0.17))] = person.upper2
    if side:  # one swinging arm seen side-on
        img[_box(yy, xx, y(0.2), y(0.5), cx - arm_w + stride * 0.3, cx + arm_w + stride * 0.3)] = person.upper
    # bag
    if person.bag == 1:
        if view == "back":
            img[_box(yy, xx, y(0.2), y(0.45), cx - half_w * 0.75, cx + half_w * 0.75)] = person.bag_color
        elif side:
            bx = cx + (half_w if view == "left" else -half_w) * 1.2
            img[_box(yy, xx, y(0.2), y(0.45), bx - half_w * 0.45, bx + half_w * 0.45)] = person.bag_color
        else:
            for sign in (-1.0, 1.0):
                sx = cx + sign * half_w * 0.55
                img[_box(yy, xx, y(0.17), y(0.38), sx - 1.0, sx + 1.0)] = person.bag_color
    elif person.bag == 2:
        bx = cx + (half_w * 1.15 if view in ("front", "right") else -half_w * 1.15)
        img[_box(yy, xx, y(0.42), y(0.56), bx - half_w * 0.35, bx + half_w * 0.35)] = person.bag_color
    # head and hair
    head_r = 0.075 * h
    head = _ellipse(yy, xx, y(0.09), cx, head_r * 1.1, head_r * 0.85)
    img[head] = person.skin
    hair_cut = y(0.09) + (head_r * 1.2 if view == "back" else -head_r * 0.25)
    img[head & (yy < hair_cut)] = person.hair
    if person.long_hair:
        img[_box(yy, xx, y(0.08), y(0.26), cx - head_r * 0.95, cx + head_r * 0.95)
            & ~(head & (yy >= hair_cut))] = person.hair

    # occlusion by a foreground object
    if rng.random() < 0.2:
        color = _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
        if rng.random() < 0.5:
            img[yy > height * rng.uniform(0.7, 0.85)] = color
        else:
            edge = width * rng.uniform(0.2, 0.35)
            img[(xx < edge) if rng.random() < 0.5 else (xx > width - edge)] = color

    img *= cam.gain * cam.cast * rng.uniform(0.85, 1.15)
    img = np.clip(img, 0.0, 1.0)
    pil = Image.fromarray((img * 255).astype(np.uint8))
    blur = cam.blur * rng.uniform(0.7, 1.3)
    if blur > 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    arr = arr + rng.normal(0.0, cam.noise, size=arr.shape).astype(np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


def _camera_plan(rng: np.random.Generator, n: int, num_cams: int, dominant: bool) -> np.ndarray:
    """Camera index (0-based) of each of an identity's n images; always at least two cameras."""
    k = int(rng.integers(2, num_cams + 1))
    cams = rng.choice(num_cams, size=k, replace=False)
    if dominant:
        share = rng.uniform(0.75, 0.92)
        probs = np.full(k, (1 - share) / (k - 1))
        probs[0] = share
    else:
        probs = np.full(k, 1.0 / k)
    plan = rng.choice(cams, size=n, p=probs)
    if len(set(plan.tolist())) < 2:
        plan[-1] = cams[1] if plan[0] == cams[0] else cams[0]
    return plan


def _write(folder: Path, pid: int, cam: int, index: int, img: np.ndarray) -> None:
    Image.fromarray(img).save(folder / f"{pid:04d}_c{cam + 1}s1_{index:06d}_00.png"
                              if pid >= 0 else folder / f"-1_c{cam + 1}s1_{index:06d}_00.png")


def generate(root: Path, cfg: SynthPedConfig, seed: int) -> None:
    """Render the whole data set into root in Market-1501 layout (PNG)."""
    folders = {s: root / s for s in ("bounding_box_train", "query", "bounding_box_test")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(seed)
    cameras = [random_camera(np.random.default_rng([seed, 10_000 + c])) for c in range(cfg.num_cams)]
    pids = master.permutation(np.arange(1, cfg.num_ids + 1))
    train_ids = set(pids[: cfg.num_ids // 2].tolist())
    index = 0
    for pid in range(1, cfg.num_ids + 1):
        rng = np.random.default_rng([seed, pid])
        person = random_person(rng)
        n = cfg.min_images + int(round((cfg.max_images - cfg.min_images) * rng.random() ** cfg.tail_power))
        plan = _camera_plan(rng, n, cfg.num_cams, rng.random() < cfg.dominant_fraction)
        images = [render(person, cameras[c], rng, cfg.height, cfg.width) for c in plan]
        if pid in train_ids:
            for c, img in zip(plan, images, strict=True):
                index += 1
                _write(folders["bounding_box_train"], pid, int(c), index, img)
            continue
        # Queries: one image from each of up to max_queries_per_id cameras, keeping a cross-camera
        # positive in the gallery so that every query is answerable under the Market rule.
        query_idx: list[int] = []
        for c in rng.permutation(np.unique(plan)):
            if len(query_idx) == cfg.max_queries_per_id:
                break
            candidates = np.flatnonzero(plan == c)
            pick = int(candidates[0])
            rest_cams = {int(plan[j]) for j in range(n) if j != pick and j not in query_idx}
            if rest_cams - {int(c)}:
                query_idx.append(pick)
        for j, (c, img) in enumerate(zip(plan, images, strict=True)):
            index += 1
            _write(folders["query" if j in query_idx else "bounding_box_test"], pid, int(c), index, img)
    extra = np.random.default_rng([seed, 99_999])
    for k in range(cfg.distractors + cfg.junk):
        cam = int(extra.integers(cfg.num_cams))
        img = render(random_person(extra), cameras[cam], extra, cfg.height, cfg.width)
        if k >= cfg.distractors:  # junk: a bad crop that shows mostly background
            img = np.roll(img, cfg.width // 2 + 8, axis=1)
        index += 1
        _write(folders["bounding_box_test"], 0 if k < cfg.distractors else -1, cam, index, img)


MANIFEST = "manifest.json"


def ensure_synthped(seed: int = 0, cfg: SynthPedConfig | None = None, root: Path | None = None) -> Path:
    """Return the folder holding synthped for (seed, cfg), rendering it on first use.

    The manifest holds a sha256 per image, verified on every use: a deleted, added or altered file
    makes the folder re-render instead of silently shrinking or changing the test set.
    """
    cfg = cfg or SynthPedConfig()
    base = Path(root) if root is not None else cache_dir() / "synthped"
    target = base / f"seed{seed}-{cfg.digest(seed)}"
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / f"{target.name}.lock")):
        if target.is_dir() and manifest_intact(target, MANIFEST, exact="*.png"):
            return target
        if target.exists():
            log.warning("synthped cache %s does not match its manifest; rendering it again", target)
            remove_folder(target)
        with atomic_folder(target) as tmp:
            generate(tmp, cfg, seed)
            manifest = {"seed": seed, "version": cfg.version, **asdict(cfg), "files": file_digests(tmp)}
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
    return target


@DATASETS.register("synthped", needs_root=False, layout="embedded, generated from the seed",
                   options=SynthPedConfig, default=True)
def synthped(root: Path | None = None, seed: int = 0, options: SynthPedConfig | None = None) -> ReidDataset:
    """The embedded data set; options override SynthPedConfig fields, e.g. num_ids=40 for a tiny copy.

    `root` is where the rendered copy is cached (tests); users never pass one (see `spec`).
    """
    folder = ensure_synthped(seed, options, root)
    return load_market_layout(folder, "synthped")
