"""Figures of the committed studies (`leaderboards/studies/*.csv`), drawn on demand by `plots`, never committed.

Each takes the study's table, a file stem and the saver `plots` uses (PNG and PDF), like the board figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

Save = Callable[[plt.Figure, Path], list[Path]]
_COLORS = ["#000000", "#D55E00", "#0072B2", "#CC79A7", "#E69F00", "#56B4E9", "#009E73"]


def tuning(frame: pd.DataFrame, dataset: str, stem: Path, save: Save) -> list[Path]:
    """`sweep --tune`: validation worst case against validation clean mAP, one point per candidate."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for color, (defense, block) in zip(_COLORS[2:], frame.groupby("defense"), strict=False):
        ax.scatter(block["val_clean_mAP"], block["val_worst_case_mAP"], color=color, label=defense)
        for r in block.itertuples():
            ax.annotate(f"{r.candidate}" + (" (chosen)" if str(r.chosen) == "True" else ""),
                        (r.val_clean_mAP, r.val_worst_case_mAP), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("validation clean mAP (%)")
    ax.set_ylabel("validation worst-case mAP (%)")
    ax.set_title(f"Tuning on held-out training identities of {dataset} (0 = defaults)", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, stem)


def ddid_phase1(frame: pd.DataFrame, stem: Path, save: Save) -> list[Path]:
    """DDID phase 1: identity against camera fidelity, one point per variant, with the target region, the
    real-image reference and chance (the trade-off sigma_start and guidance move along)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    first = frame.iloc[0]
    ax.axhspan(50, 105, xmin=first["cam_chance"] / 105, color="#009E73", alpha=0.08,
               label="target: identity >= 50 %, camera above chance")
    ax.axvline(first["cam_chance"], color="#999999", ls="--", lw=0.8, label="camera: chance")
    ax.axhline(first["id_top1_real_at_generator_res"], color="#0072B2", ls="--", lw=0.8,
               label="identity: real images at generator resolution")
    markers = dict(zip(sorted(frame["sigma_start"].dropna().unique()), "osD^v<>p", strict=False))
    colors = dict(zip(sorted({(r.id_guidance, r.cam_guidance) for r in frame.itertuples()}), _COLORS, strict=False))
    for (gid, gcam), color in colors.items():
        for r in frame[(frame["id_guidance"] == gid) & (frame["cam_guidance"] == gcam)].itertuples():
            generated = r.mode == "generate"
            kept = r.keep_center > 0
            ax.scatter(r.cam_fidelity, r.id_fidelity, marker="*" if generated else markers[r.sigma_start],
                       s=80 if generated else 40, color=color if generated or kept else "none", edgecolors=color)
        ax.scatter([], [], color=color, marker="s", label=f"guidance id {gid:g}, camera {gcam:g}")
    for sigma, m in markers.items():
        ax.scatter([], [], color="#777777", marker=m, label=f"resample, sigma_start {sigma:g}")
    ax.scatter([], [], color="#777777", marker="*", s=80, label="generate (from noise)")
    ax.scatter([], [], color="#777777", marker="o", label="filled: centre kept (RePaint); hollow: plain SDEdit")
    ax.set_xlim(0, 105)
    ax.set_ylim(0, 105)
    ax.set_xlabel("camera fidelity: camera classifier top-1 vs target camera (%)")
    ax.set_ylabel("identity fidelity: warm-start top-1 vs identity (%)")
    ax.set_title(f"DDID phase 1 on {first['dataset']} training identities ({int(first['height'])}x"
                 f"{int(first['width'])} generator, {int(first['train_steps'])} steps)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save(fig, stem)


def plot_studies(studies_dir: Path, out: Path, save: Save) -> list[Path]:
    """Every study figure whose table is in `studies_dir`, into `out`."""
    paths: list[Path] = []
    for csv in sorted(studies_dir.glob("tuning-*.csv")):
        paths += tuning(pd.read_csv(csv), csv.stem.removeprefix("tuning-"), out / csv.stem, save)
    for csv in sorted(studies_dir.glob("ddid-phase1-*.csv")):
        paths += ddid_phase1(pd.read_csv(csv), out / csv.stem, save)
    return paths
