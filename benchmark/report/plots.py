"""Paper figures (PNG + PDF) from the leaderboard CSVs and the run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.core.protocol import STANDARD_EPS_LABEL
from benchmark.report import board_figures as figures
from benchmark.report.boards import check_boards, is_variant, read_board, read_summary, summary_on_view  # noqa: E402
from benchmark.report.captions import suite_label
from benchmark.report.records import read_json_record
from benchmark.report.study_figures import plot_studies  # noqa: E402

plt.rcParams.update({"figure.dpi": 120, "savefig.bbox": "tight", "font.size": 9, "axes.grid": True,
                     "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})


MATCH_COLOR, MISS_COLOR = "#0072B2", "#D55E00"  # Okabe-Ito blue and vermillion


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write a figure as `<stem>.png` and `<stem>.pdf` and close it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    # not with_suffix: stems such as "throughput-cpu-torch2.14.1" contain dots
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    for p in paths:
        # no creation date in PDFs, so redrawing unchanged data leaves the committed files unchanged
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


# -- figures of one run -----------------------------------------------------------------------------
def _to_hwc(img: Any) -> np.ndarray:
    arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr.transpose(1, 2, 0) if arr.shape[0] == 3 else arr


def save_examples(clean: Any, adversarial: Any, index: list[int], path: Path) -> None:
    """The run's example perturbations as a small array file: per example query, adversarial minus clean in grey
    levels (int8, |δ| ≤ ε·255) and the query's index. The clean images are re-read from the data set."""
    clean_u8 = np.stack([_to_hwc(c) for c in clean]).astype(np.int16)
    adv_u8 = np.stack([_to_hwc(a) for a in adversarial]).astype(np.int16)
    np.savez_compressed(path, delta=(adv_u8 - clean_u8).astype(np.int8), index=np.asarray(index, dtype=np.int64))


def plot_adversarial_grid(clean: list[np.ndarray], adversarial: list[np.ndarray], title: str,
                          stem: Path) -> list[Path]:
    """Clean, adversarial and amplified perturbation per query (HWC uint8 images)."""
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n, 6.2))
    for i in range(n):
        c, a = clean[i].astype(np.float32) / 255, adversarial[i].astype(np.float32) / 255
        delta = a - c
        scale = max(np.abs(delta).max(), 1e-6)
        for row, img in enumerate((c, a, 0.5 + delta / (2 * scale))):
            ax = axes[row, i] if n > 1 else axes[row]
            ax.imshow(np.clip(img, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    for row, label in enumerate(("clean", "adversarial", "perturbation\n(amplified)")):
        (axes[row, 0] if n > 1 else axes[row]).set_ylabel(label)
    fig.suptitle(title)
    return save_figure(fig, stem)


def plot_ranking(record: dict[str, Any], image_lookup: dict[str, np.ndarray], stem: Path) -> list[Path]:
    """Query + top-k gallery, clean vs attacked; blue solid frame and ✓: right identity; vermillion dashed ✗: wrong."""
    queries = record.get("queries", [])
    if not queries:
        return []
    k = len(queries[0]["clean"])
    fig, axes = plt.subplots(2 * len(queries), k + 1, figsize=(0.75 * (k + 1), 1.3 * 2 * len(queries)),
                             gridspec_kw={"hspace": 0.08, "wspace": 0.08})
    for qi, q in enumerate(queries):
        for half, label in enumerate(("clean", "attacked")):
            row = 2 * qi + half
            ax = axes[row, 0]
            ax.imshow(image_lookup.get(q["query"] if half == 0 else f"adv:{q['query']}", np.zeros((8, 4, 3))))
            ax.set_ylabel(f"{label}\npid {q['pid']}", fontsize=7)
            for j, hit in enumerate(q[label]):
                axg = axes[row, j + 1]
                axg.imshow(image_lookup.get(hit["name"], np.zeros((8, 4, 3))))
                # colour-blind safe: blue/solid with a tick for the right identity, vermillion/dashed with a cross
                for spine in axg.spines.values():
                    spine.set_visible(True)
                    spine.set_color(MATCH_COLOR if hit["match"] else MISS_COLOR)
                    spine.set_linewidth(2.5)
                    spine.set_linestyle("-" if hit["match"] else (0, (2, 1)))
                axg.text(0.04, 0.96, "✓" if hit["match"] else "✗", transform=axg.transAxes, ha="left", va="top",
                         fontsize=8, fontweight="bold", color=MATCH_COLOR if hit["match"] else MISS_COLOR,
                         bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
            for ax_ in axes[row]:
                ax_.set_xticks([])
                ax_.set_yticks([])
                ax_.grid(False)
    fig.canvas.draw()  # images keep their aspect: the title goes right above where the top row really is
    top = max(ax.get_position().y1 for ax in axes[0])
    fig.suptitle(f"top-{k} retrieval, clean vs {record['attack']} @ {record['eps']}\n"
                 "✓ blue: same identity   ✗ vermillion: other identity", y=top + 0.003, va="bottom", fontsize=8)
    return save_figure(fig, stem)


def plot_per_id(per_id_csv: Path, stem: Path, title: str) -> list[Path]:
    """Box plot of per-identity AP, clean and per attack."""
    table = pd.read_csv(per_id_csv)
    cols = [c for c in table.columns if c != "pid"]
    fig, ax = plt.subplots(figsize=(max(4, 0.55 * len(cols)), 3))
    ax.boxplot([table[c].dropna() for c in cols], tick_labels=cols, showfliers=True)
    ax.set_ylabel("per-identity AP (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=60)
    return save_figure(fig, stem)


def plot_run(outcome: Any, record: dict[str, Any], folder: Path) -> list[Path]:
    """Figures of one run, drawn when the run ends (images come from memory); writes its examples file too."""
    out: list[Path] = []
    title = f"{outcome.spec.defense.label} / {outcome.workspace.dataset.name}"
    out += plot_per_id(folder / "per_id_ap.csv", folder / "per_id_ap", f"per-ID AP, {title}")
    if record:
        idx = record["adversarial_index"]
        strongest = next(r for r in outcome.attacks + outcome.aggregates if r.attack == record["attack"])
        save_examples(outcome.workspace.query.images[idx], strongest.adversarial[idx], idx, folder / "examples.npz")
        clean, adversarial = _examples(folder / "examples.npz", [_to_hwc(outcome.workspace.query.images[i])
                                                                  for i in idx])
        out += plot_adversarial_grid(clean, adversarial, f"{record['attack']} @ {record['eps']} on {title}",
                                     folder / "adversarial")
        out += plot_ranking(record, _lookup(record, clean, adversarial, _gallery_from_run(outcome, record)),
                            folder / "ranking")
    return out


def _examples(path: Path, clean: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The example queries, clean and adversarial (clean + the stored perturbation), as HWC uint8."""
    delta = np.load(path)["delta"].astype(np.int16)
    adversarial = [np.clip(c.astype(np.int16) + d, 0, 255).astype(np.uint8) for c, d in zip(clean, delta, strict=True)]
    return clean, adversarial


def _lookup(record: dict[str, Any], clean: list[np.ndarray], adversarial: list[np.ndarray],
            gallery: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Images of the ranking figure by name: the example queries (clean and `adv:` ones) and their gallery hits."""
    lookup = dict(gallery)
    for i, q in enumerate(record["queries"]):
        lookup[q["query"]], lookup[f"adv:{q['query']}"] = clean[i], adversarial[i]
    return lookup


def _gallery_from_run(outcome: Any, record: dict[str, Any]) -> dict[str, np.ndarray]:
    ws = outcome.workspace
    names = {it.path.name: i for i, it in enumerate(ws.dataset.gallery)}
    return {hit["name"]: _to_hwc(ws.gallery.images[names[hit["name"]]])
            for q in record["queries"] for half in ("clean", "attacked") for hit in q[half]}


def replot_run(folder: Path) -> list[Path]:
    """Redraw a run's figures from its records (per_id_ap.csv, ranking.json, examples.npz) and its data set."""
    out: list[Path] = []
    config = read_json_record(folder / "config.json")
    spec = config["spec"]
    title = f"{spec['defense_label']} / {spec['data']['name']}"
    if (folder / "per_id_ap.csv").is_file():
        out += plot_per_id(folder / "per_id_ap.csv", folder / "per_id_ap", f"per-ID AP, {title}")
    record = read_json_record(folder / "ranking.json") if (folder / "ranking.json").is_file() else {}
    images = _images_from_data(record, spec) if record and (folder / "examples.npz").is_file() else None
    if images is not None:
        clean, adversarial = _examples(folder / "examples.npz", images[0])
        out += plot_adversarial_grid(clean, adversarial, f"{record['attack']} @ {record['eps']} on {title}",
                                     folder / "adversarial")
        out += plot_ranking(record, _lookup(record, clean, adversarial, images[1]), folder / "ranking")
    return out


def _images_from_data(record: dict[str, Any], spec: dict[str, Any]
                      ) -> tuple[list[np.ndarray], dict[str, np.ndarray]] | None:
    """The example queries and the ranking's gallery hits, re-read from the run's data set at its input size.

    None when the data set cannot be read here (e.g. a folder given by --data-root elsewhere).
    """
    from benchmark.core.errors import BenchmarkError
    from benchmark.data.base import build_dataset, load_image
    from benchmark.run.spec import DataSpec

    data = DataSpec(spec["data"]["name"], spec["data"]["root"], tuple(tuple(o) for o in spec["data"]["options"]))
    try:
        dataset = build_dataset(data.name, data.root, seed=int(spec.get("data_seed", spec["seed"])),
                                options=data.options_object())
    except (BenchmarkError, OSError):
        return None
    size = (int(spec["model"]["height"]), int(spec["model"]["width"]))
    queries = [_to_hwc(load_image(dataset.query[i].path, size)) for i in record["adversarial_index"]]
    gallery_paths = {it.path.name: it.path for it in dataset.gallery}
    hits = {hit["name"] for q in record["queries"] for half in ("clean", "attacked") for hit in q[half]}
    if not hits <= set(gallery_paths):
        return None
    return queries, {name: _to_hwc(load_image(gallery_paths[name], size)) for name in hits}


# -- figures from the leaderboards ------------------------------------------------------------------
def _grouped_bars(table: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    cols = ["clean"] + sorted(c for c in table.columns if c != "clean")
    table = table.reindex(columns=[c for c in cols if c in table.columns])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table) * len(table.columns) / 4), 3.4))
    width = 0.8 / len(table.columns)
    xs = np.arange(len(table))
    cmap = plt.get_cmap("tab20")
    for i, col in enumerate(table.columns):
        ax.bar(xs + i * width, table[col].values, width, label=col, color="black" if col == "clean" else cmap(i))
    ax.set_xticks(xs + 0.4 - width / 2, table.index, rotation=20, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.legend(fontsize=6, ncols=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, stem)


def _mAP_at_8(board: pd.DataFrame) -> pd.DataFrame:
    scope = board[(board["eps"] == STANDARD_EPS_LABEL) | (board["seen"] == "clean")]
    return scope.pivot_table(index="defense", columns="attack", values="mAP", aggfunc="mean")


def plot_variants(board: pd.DataFrame, dataset: str, out: Path) -> list[Path]:
    """Each defense run with options (e.g. DDID ablations) beside its default, on the attacks all share."""
    table = _mAP_at_8(board)
    variants = table.index[is_variant(table.index)]
    paths: list[Path] = []
    for base in sorted({v.split("[", 1)[0] for v in variants}):
        rows = [base] * (base in table.index) + sorted(v for v in variants if v.startswith(base + "["))
        sub = table.loc[rows].dropna(axis=1)
        if len(rows) < 2 or sub.empty:
            continue
        paths += _grouped_bars(sub, f"{base} variants, mAP at {STANDARD_EPS_LABEL}, {dataset}",
                               out / f"{dataset}-{base}-variants")
    return paths


def plot_ablations(leaderboard_dir: Path, dataset: str, out: Path) -> list[Path]:
    """Each declared ablation study with rows on the board: clean and worst-case mAP per step, bars at the
    mean over seeds with ±1 sd, every seed as a dot."""
    from benchmark.report import ablation
    from defenses.base import DEFENSES

    paths: list[Path] = []
    for name in DEFENSES.names():
        if not DEFENSES.get(name).ablation:
            continue
        seeds = ablation.per_seed(leaderboard_dir, dataset, name)
        if seeds.empty:
            continue
        stats = ablation.summary(leaderboard_dir, dataset, name)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=False)
        ys = np.arange(len(stats))[::-1]
        for ax, metric, title in zip(axes, ("clean_mAP", "worst_case_mAP", "fna_mAP"),
                                     ("clean mAP", f"worst-case mAP ({suite_label(seeds)})", "FNA mAP"), strict=True):
            ax.barh(ys, stats[f"{metric}_mean"], xerr=stats[f"{metric}_sd"].fillna(0), color="#9ecae1",
                    edgecolor="#3182bd", capsize=3)
            for y, step in zip(ys, stats["step"], strict=True):
                values = seeds.loc[seeds["step"] == step, metric].dropna()
                ax.plot(values, [y] * len(values), "o", color="black", ms=3)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("mAP (%)")
            ax.set_yticks(ys, [f"{s} (n={n})" for s, n in zip(stats["step"], stats["n"], strict=True)]
                          if ax is axes[0] else [])
        fig.suptitle(f"{name} ablation on {dataset}: mean ± sd over seeds (dots: single seeds)", fontsize=10)
        fig.tight_layout()
        paths += save_figure(fig, out / f"{dataset}-{name}-ablation")
    return paths


def plot_all(leaderboard_dir: str | Path, results_dir: str | Path, out: str | Path) -> list[Path]:
    """Every figure from the boards in `leaderboard_dir` and the run folders."""
    leaderboard_dir, results_dir, out = Path(leaderboard_dir), Path(results_dir), Path(out)
    check_boards(leaderboard_dir)
    paths: list[Path] = []
    for board_path in sorted(leaderboard_dir.glob("*.csv")):
        name = board_path.stem
        if name.startswith("throughput-"):
            paths += figures.throughput(pd.read_csv(board_path), name, out / name, save_figure)
            continue
        if name.startswith(("summary-", "seeds-")):  # derived from the board of the same data set
            continue
        board = read_board(board_path)
        summary = summary_on_view(read_summary(leaderboard_dir / f"summary-{name}.csv"))
        paths += figures.heatmap(board, summary, name, out / f"{name}-heatmap", save_figure)
        paths += figures.eps_curves(board, name, out / f"{name}-eps-curves", save_figure)
        paths += figures.iteration_curves(summary, name, out / f"{name}-iteration-curves", save_figure)
        paths += figures.clean_vs_worst_case(summary, name, out / f"{name}-clean-vs-worst-case", save_figure)
        paths += figures.worst_case_ap(summary, results_dir, name, out / f"{name}-worst-case-ap", save_figure)
        paths += figures.cmc(board, summary, name, out / f"{name}-cmc", save_figure)
        paths += figures.seen_unseen(summary, name, out / f"{name}-seen-unseen", save_figure)
        paths += plot_variants(board, name, out)
        paths += plot_ablations(leaderboard_dir, name, out)
    paths += plot_studies(leaderboard_dir / "studies", out / "studies", save_figure)
    for folder in sorted(p for p in results_dir.glob("*") if (p / "config.json").is_file()):
        paths += replot_run(folder)
    return paths
