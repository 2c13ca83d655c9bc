"""How much identity and camera DDID's phase 1 keeps, per mode and noise level, on the training identities.

`python -m defenses.ddid.phase1_study --sigmas 0.5,1,2,4,8` trains (or loads) the warm-start model
and one generator, resamples the balancing plan at each sigma_start (and samples it from noise, as
`generate` does), and writes `leaderboards/studies/ddid-phase1-<dataset>-<HxW>.csv` and `.png`. Only the
training split is used: choosing sigma_start from this study never looks at a test identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.device import resolve_device  # noqa: E402
from benchmark.errors import BenchmarkError  # noqa: E402
from benchmark.harness import load_workspace, train_or_load  # noqa: E402
from benchmark.spec import make_spec  # noqa: E402
from defenses.ddid.balancing import DiffusionConfig, balance  # noqa: E402
from defenses.ddid.quality import phase1_quality  # noqa: E402

COLUMNS = ("id_fidelity", "id_top1_real_at_generator_res", "cam_fidelity", "cam_top1_real_held_out", "cam_chance")


def study(dataset: str, data_root: str | None, sigmas: list[float], cfg: DiffusionConfig, seed: int,
          device: torch.device) -> pd.DataFrame:
    """One row per phase-1 variant: generate, then resample at each sigma_start."""
    spec = make_spec(defense="ddid", dataset=dataset, data_root=data_root, seed=seed)
    ws = load_workspace(spec)
    warm, _ = train_or_load(spec.defense.parent, spec, ws, device)
    rows = []
    variants = [("generate", None)] + [("resample", s) for s in sigmas]
    for mode, sigma in variants:
        variant = dataclasses.replace(cfg, mode=mode, sigma_start=sigma if sigma is not None else cfg.sigma_start)
        balanced = balance(ws.train, variant, seed, device)
        quality = phase1_quality(warm, ws.train, balanced.generated, variant, device, seed)
        quality.pop("_keep", None)
        rows.append({"dataset": dataset, "mode": mode, "sigma_start": sigma, "height": variant.height,
                     "width": variant.width, "train_steps": variant.train_steps, "seed": seed,
                     **{k: quality.get(k) for k in ("generated", *COLUMNS, "kept_by_id_filter")},
                     "samples": str(balanced.folder / "samples.png")})
        logging.getLogger("benchmark").info("%s sigma %s: identity %.1f%%, camera %.1f%%", mode, sigma,
                                            quality.get("id_fidelity", 0), quality.get("cam_fidelity", 0))
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Identity and camera fidelity against sigma_start, with the real-image references and chance."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    res = frame[frame["mode"] == "resample"].sort_values("sigma_start")
    gen = frame[frame["mode"] == "generate"].iloc[0]
    ax.plot(res["sigma_start"], res["id_fidelity"], "o-", color="#0072B2", label="identity fidelity (resample)")
    ax.plot(res["sigma_start"], res["cam_fidelity"], "s-", color="#D55E00", label="camera fidelity (resample)")
    ax.axhline(gen["id_fidelity"], color="#0072B2", ls=":", label="identity fidelity (generate)")
    ax.axhline(gen["cam_fidelity"], color="#D55E00", ls=":", label="camera fidelity (generate)")
    ax.axhline(gen["id_top1_real_at_generator_res"], color="#0072B2", ls="--", lw=0.8,
               label="identity: real images at generator resolution")
    ax.axhline(gen["cam_chance"], color="#999999", ls="--", lw=0.8, label="camera: chance")
    ax.set_xscale("log")
    ax.set_xticks(list(res["sigma_start"]), [f"{v:g}" for v in res["sigma_start"]])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("sigma_start (EDM noise level the real image is noised to)")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"DDID phase 1 on {gen['dataset']} training identities "
                 f"({int(gen['height'])}x{int(gen['width'])} generator)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study, write the CSV and the figure."""
    p = argparse.ArgumentParser(prog="python -m defenses.ddid.phase1_study", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthped")
    p.add_argument("--data-root", default=None)
    p.add_argument("--sigmas", default="0.5,1,2,4,8")
    p.add_argument("--height", type=int, default=DiffusionConfig.height)
    p.add_argument("--width", type=int, default=DiffusionConfig.width)
    p.add_argument("--train-steps", type=int, default=DiffusionConfig.train_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="leaderboards/studies")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("benchmark").setLevel(logging.INFO)
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
        if not sigmas or any(not 0 < s <= 80 for s in sigmas):
            raise BenchmarkError(f"--sigmas {args.sigmas!r}: give noise levels in (0, 80], e.g. 0.5,1,2,4,8")
        cfg = DiffusionConfig(height=args.height, width=args.width, train_steps=args.train_steps)
        frame = study(args.dataset, args.data_root, sigmas, cfg, args.seed, resolve_device(args.device))
    except (BenchmarkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ddid-phase1-{args.dataset}-{args.height}x{args.width}"
    atomic_write_text(out / f"{stem}.csv", frame.drop(columns=["samples"]).to_csv(index=False))
    plot(frame, out / f"{stem}.png")
    print(frame[["mode", "sigma_start", "id_fidelity", "cam_fidelity", "cam_chance"]].to_string(index=False))
    print(f"{out / stem}.csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
