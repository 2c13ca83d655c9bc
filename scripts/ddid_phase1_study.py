"""How much identity and camera DDID's phase 1 keeps, per mode, noise level and guidance, on the training identities.

`python scripts/ddid_phase1_study.py --sigmas 1.5,5 --id-guidance 0 --cam-guidance 0,4 --keep-center 0,0.4`
trains (or loads) the warm-start model and one generator, resamples the balancing plan at every
sigma_start x guidance x kept centre (and samples it from noise, as `generate` does, at every guidance),
and writes
`leaderboards/studies/ddid-phase1-<dataset>-<HxW>.csv` and its figure (`.png`, `.pdf`; not committed:
`python -m benchmark plots` redraws it from the CSV). Only the training split is used:
choosing phase 1's settings from this study never looks at a test identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmark.core.atomic import atomic_write_text  # noqa: E402
from benchmark.core.device import resolve_device  # noqa: E402
from benchmark.core.errors import BenchmarkError  # noqa: E402
from benchmark.report.plots import save_figure  # noqa: E402
from benchmark.report.study_figures import ddid_phase1  # noqa: E402
from benchmark.run.checkpoints import train_or_load  # noqa: E402
from benchmark.run.spec import make_spec  # noqa: E402
from benchmark.run.workspace import load_workspace  # noqa: E402
from defenses.ddid.balancing import DiffusionConfig, balance  # noqa: E402
from defenses.ddid.quality import phase1_quality  # noqa: E402

COLUMNS = ("id_fidelity", "id_top1_real_at_generator_res", "cam_fidelity", "cam_top1_real_held_out", "cam_chance")
FILTER_COLUMNS = ("kept_by_id_filter", "cam_fidelity_kept")  # what the identity filter would keep


def study(dataset: str, data_root: str | None, sigmas: list[float], id_guidance: list[float],
          cam_guidance: list[float], keep_center: list[float], cfg: DiffusionConfig, seed: int, device: torch.device,
          with_generate: bool = True) -> pd.DataFrame:
    """One row per phase-1 variant: generate at every guidance pair, then resample at every sigma_start x
    guidance pair x kept centre."""
    spec = make_spec(defense="ddid", dataset=dataset, data_root=data_root, seed=seed)
    ws = load_workspace(spec)
    warm, _ = train_or_load(spec.defense.parent, spec, ws, device)
    rows = []
    guidance = list(itertools.product(id_guidance, cam_guidance))
    variants = [("generate", None, *gd, 0.0) for gd in guidance] * with_generate + [
        ("resample", s, *gd, k) for k in keep_center for s in sigmas for gd in guidance]
    for mode, sigma, gid, gcam, keep in variants:
        variant = dataclasses.replace(cfg, mode=mode, sigma_start=sigma if sigma is not None else cfg.sigma_start,
                                      id_guidance=gid, cam_guidance=gcam, keep_center=keep)
        balanced = balance(ws.train, variant, seed, device)
        quality = phase1_quality(warm, ws.train, balanced.generated, variant, device, seed)
        quality.pop("_keep", None)
        rows.append({"dataset": dataset, "mode": mode, "sigma_start": sigma, "id_guidance": gid,
                     "cam_guidance": gcam, "keep_center": variant.keep_center, "height": variant.height,
                     "width": variant.width,
                     "channels": "-".join(map(str, variant.channels)), "train_steps": variant.train_steps,
                     "sample_steps": variant.sample_steps,
                     "seed": seed, **{k: quality.get(k) for k in ("generated", *COLUMNS, *FILTER_COLUMNS)},
                     "fit_seconds": balanced.info.get("fit_seconds"),
                     "generate_seconds": balanced.info.get("generate_seconds"),
                     "samples": str(balanced.folder / "samples.png")})
        logging.getLogger("benchmark").info("%s sigma %s guidance id %g cam %g kept centre %g: identity %.1f%%, "
                                            "camera %.1f%%", mode, sigma, gid, gcam, keep,
                                            quality.get("id_fidelity", 0),
                                            quality.get("cam_fidelity", 0))
    return pd.DataFrame(rows)


def _floats(text: str, flag: str, low: float, high: float) -> list[float]:
    values = [float(s) for s in text.split(",") if s.strip()]
    if not values or any(not low <= v <= high for v in values):
        raise BenchmarkError(f"{flag} {text!r}: give comma-separated values in [{low:g}, {high:g}]")
    return values


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study, write the CSV and the figure."""
    p = argparse.ArgumentParser(prog="python scripts/ddid_phase1_study.py", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthped")
    p.add_argument("--data-root", default=None)
    p.add_argument("--sigmas", default="1.5,5")
    p.add_argument("--id-guidance", default="0", help="identity guidance scales to try")
    p.add_argument("--cam-guidance", default="0,4", help="camera guidance scales to try")
    p.add_argument("--no-generate", action="store_true", help="resample variants only (no sampling from noise)")
    p.add_argument("--keep-center", default="0,0.4", help="resample: width shares of the kept centre box to try")
    p.add_argument("--height", type=int, default=DiffusionConfig.height)
    p.add_argument("--width", type=int, default=DiffusionConfig.width)
    p.add_argument("--train-steps", type=int, default=DiffusionConfig.train_steps)
    p.add_argument("--sample-steps", type=int, default=DiffusionConfig.sample_steps,
                   help="sampler steps from the start noise level down")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="leaderboards/studies")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("benchmark").setLevel(logging.INFO)
    try:
        sigmas = _floats(args.sigmas, "--sigmas", 1e-3, 80)
        id_guidance = _floats(args.id_guidance, "--id-guidance", 0, 50)
        cam_guidance = _floats(args.cam_guidance, "--cam-guidance", 0, 50)
        keep_center = _floats(args.keep_center, "--keep-center", 0, 0.99)
        cfg = DiffusionConfig(height=args.height, width=args.width, train_steps=args.train_steps,
                              sample_steps=args.sample_steps)
        frame = study(args.dataset, args.data_root, sigmas, id_guidance, cam_guidance, keep_center, cfg, args.seed,
                      resolve_device(args.device), with_generate=not args.no_generate)
    except (BenchmarkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ddid-phase1-{args.dataset}-{args.height}x{args.width}"
    if (cfg.train_steps, cfg.sample_steps) != (DiffusionConfig.train_steps, DiffusionConfig.sample_steps):
        stem += f"-{cfg.train_steps}steps-{cfg.sample_steps}samplesteps"  # a budget study beside the default's
    atomic_write_text(out / f"{stem}.csv", frame.drop(columns=["samples"]).to_csv(index=False))
    ddid_phase1(frame, out / stem, save_figure)
    print(frame[["mode", "sigma_start", "id_guidance", "cam_guidance", "keep_center", "id_fidelity", "cam_fidelity",
                 "cam_chance"]].to_string(index=False))
    print(f"{out / stem}.csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
