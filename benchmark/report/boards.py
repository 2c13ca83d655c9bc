"""CSV leaderboards: one schema dataclass per row, upserted by key under a file lock, written atomically.

`<dir>/<dataset>.csv` (official: the protocol's standard settings only) or `<dir>/custom/<dataset>.csv`
(any other run, its differing settings in the `settings` key column): one row per defense x backbone
x attack x eps x seed (x train set x settings). `summary-<dataset>.csv` beside each: one row per
defense x backbone x seed x suite (x train set x settings), built from ONE run, the one that covered the
most attacks at the standard ε, so its `command` reproduces every number in it; readers show one suite per
comparison (`headline_rows`). Columns are documented in `leaderboards/README.md`.

A model is (data set, train set, defense label, backbone, seed, settings); its checkpoint key hashes
the full training specification and code, its model digest what the trained model computes. When a board
would hold rows of one model from two trainings (changed defaults, which a label leaves out, or changed
training code that changed the weights), the most recently trained one keeps the model and the other's rows
go, whichever side of an upsert they are on: rows of two trainings never mix under one model, and none
outlive the recipe they measured. Two checkpoint keys with one model digest are one training.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from benchmark.core.atomic import atomic_write_text
from benchmark.core.enums import Seen
from benchmark.core.errors import BenchmarkError
from benchmark.core.protocol import HEADLINE_SUITE, WORST_CASE
from benchmark.core.protocol import STANDARD_EPS_LABEL as STANDARD_EPS
from benchmark.core.seed_stats import paired_interval, paired_verdict, verdict

log = logging.getLogger("benchmark.report.boards")

ROW_KEY = ("dataset", "train_dataset", "defense", "backbone", "attack", "eps", "seed", "settings")
#: one trained model (its rows may come from several runs of one checkpoint)
MODEL_KEY = ("dataset", "train_dataset", "defense", "backbone", "seed", "settings")
#: a summary row: one per model and suite, so a suite's new version is published beside the old one
SUMMARY_KEY = (*MODEL_KEY, "suite")
#: what the `images_per_second` column of a throughput board counts, by row kind
THROUGHPUT_UNITS = {"extract": "images / s (one forward pass each)",
                    "attack": "image-iterations / s (one gradient step or query per image)",
                    "train-step": "images / s (one training step)"}
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def column(doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A board column whose meaning travels with its field: `leaderboards/README.md` is generated from it."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class LeaderboardRow:
    """One (defense, attack, ε) result of one run, with the provenance of its training and evaluation."""

    dataset: str = column("test data set (query + gallery; identities unseen in training)")
    train_dataset: str = column("data set the model was trained on (differs for cross-domain runs)")
    defense: str = column("canonical defense label: the registry name, then its non-default options in sorted order "
                          "(`ddid[ablate=fnes+self-meta]`)")
    backbone: str = column("backbone registry name (`osnet_small`, `resnet50`, `timm:NAME`, ...)")
    attack: str = column("attack registry name; `clean` for the unattacked row; a suite's name (`standard-v3`) for its "
                         "per-query worst case; `worst-case` for the per-query worst case over every attack of the run "
                         "and the clean image")
    eps: str = column("L∞ budget as a fraction of 255 (`8/255`); `0` on the clean row")
    eps_value: float = column("the same budget in [0, 1] units")
    family: str = column("the attack's declared family (gradient, guided, universal, transfer, query)")
    knowledge: str = column("the attack's declared knowledge (white-box, transfer, score-based)")
    seen: str = column("`clean`, `seen` (the defense trains with this attack), `unseen`, or `worst-case`")
    attacked_with: str = column("the adaptive forwards white-box attacks differentiated through, `+`-joined: `direct`, "
                                "`exact`, `diff-jpeg`, `cubic+ste`, or `bpda` on request")
    clean_mAP: float = column("mAP of the same model on clean queries (percent)")
    clean_R1: float = column("rank-1 of the same model on clean queries (percent)")
    mAP: float = column("mAP in percent under the Market-1501 rule (same-ID-same-camera and junk ignored, distractors "
                        "kept)")
    R1: float = column("rank-1 matching rate (percent)")
    R5: float = column("rank-5 matching rate (percent)")
    R10: float = column("rank-10 matching rate (percent)")
    mINP: float = column("mean inverse negative penalty (percent)")
    mAP_drop: float = column("`clean_mAP - mAP`")
    id_ap_var: float = column("population variance of per-identity AP (percent²): a bias metric")
    id_ap_worst10: float = column("mean AP of the worst 10 % of identities: a bias metric")
    clean_id_ap_var: float = column("`id_ap_var` of the clean row")
    num_queries: int = column("queries with a valid positive (the others are skipped)")
    attack_seconds: float = column("wall time of the attack over all queries")
    queries_per_image: float = column("model queries per image of a query-based (score-based) attack; empty for others")
    flags: str = column("sanity flags raised for this run, `;`-separated (glossary in docs/protocol.md)")
    train_seconds: float = column("training time of the model (near 0 when its checkpoint came from the cache)")
    run_id: str = column("the run's folder: `runs/RUN_ID` in the workspace, `results/RUN_ID` once published")
    seed: int = column("training seed (and seed of the attacks)")
    package_version: str = column("version of this package")
    torch_version: str = column("torch version")
    git_commit: str = column("commit of the evaluation (`+dirty` if tracked code had uncommitted changes)")
    device: str = column("device of the evaluation (`cpu`, `cuda:0`)")
    date: str = column("time of the evaluation (UTC, ISO 8601)")
    command: str = column("the command that made the row: rerun it at `git_commit` to reproduce it")
    settings: str = column("custom settings that differ from the protocol, `;`-joined (`epochs=2;input=64x32`); empty "
                           "on official boards", "")
    train_commit: str = column("commit the checkpoint was trained at", "")
    train_date: str = column("time the checkpoint was trained", "")
    checkpoint: str = column("the checkpoint's cache key (a hash of the data, every option, the warm-start parent and "
                             "the training code)", "")
    data_digest: str = column("content hash of the train, query and gallery splits", "")
    data_seed: str = column("seed that drew the data set (synthped's images, a random identity split); official rows: "
                            "0, the protocol's test set. Rows made before it was separate from `seed` were drawn by "
                            "their training seed, which `publish --backfill` wrote here", "")
    defense_dist: str = column("the distribution (name and version) that provided the defense: this package or a "
                               "plug-in", "")
    attack_dist: str = column("the distribution that provided the attack", "")
    allow_dirty: bool = column("the row was written with `--allow-dirty` from a tree with uncommitted code", False)
    training_quality: str = column("the defense's own training diagnostics, `name=value;...` (DDID: phase-1 identity "
                                   "and camera fidelity in percent, chance, images used)", "")
    suite: str = column("the versioned suite the run included (`standard-v3`); empty if none", "")
    forward: str = column("the adaptive forward this row's attack used; empty on worst-case rows", "")
    mAP_2x: float = column("suite rows of runs with `--check-convergence`: worst-case mAP with doubled APGD "
                           "iterations", math.nan)
    cpu_model: str = column("CPU model of the evaluating machine (bits differ between CPU models)", "")
    cpu_capability: str = column("the instruction set torch's CPU kernels use (`torch.backends.cpu."
                                 "get_cpu_capability()`)", "")
    gpu: str = column("GPU name, if the evaluation ran on one", "")
    cuda_version: str = column("CUDA version torch was built with", "")
    cudnn_version: str = column("cuDNN version", "")
    libraries: str = column("versions of the other libraries that compute numbers (diffusers, kornia, ART, numpy)", "")
    mAP_low: float = column("95 % bootstrap interval of `mAP` over queries, resampling identities "
                            "(`benchmark.core.intervals`): lower end", math.nan)
    mAP_high: float = column("upper end of the same interval", math.nan)
    R1_low: float = column("95 % bootstrap interval of `R1`, resampling identities: lower end", math.nan)
    R1_high: float = column("upper end of the same interval", math.nan)
    model_digest: str = column("digest of the trained model as it computes: parameters, buffers, module tree and "
                               "forward code (`benchmark.models.external.content_hash`, 16 hex). Rows with equal "
                               "digests measured one model, whatever their checkpoint keys (a key also hashes "
                               "training code that left the weights unchanged); empty on rows made before it", "")


def doc_of(row_type: type, name: str) -> str:
    """The documented meaning of one column of a row dataclass."""
    return next(f.metadata["doc"] for f in fields(row_type) if f.name == name)


def _as_on_board(name: str, default: Any = dataclasses.MISSING) -> Any:
    return column(doc_of(LeaderboardRow, name), default)


@dataclass
class SummaryRow:
    """One trained model's headline numbers, all from ONE run of it (`summary-<dataset>.csv`)."""

    dataset: str = _as_on_board("dataset")
    train_dataset: str = _as_on_board("train_dataset")
    defense: str = _as_on_board("defense")
    backbone: str = _as_on_board("backbone")
    seed: int = _as_on_board("seed")
    settings: str = _as_on_board("settings")
    clean_mAP: float = _as_on_board("clean_mAP")
    clean_R1: float = _as_on_board("clean_R1")
    clean_id_ap_var: float = _as_on_board("clean_id_ap_var")
    eps: str = column("the ε the numbers below are at: `8/255`, or `all` when the run did not attack at 8/255, `-` "
                      "when it attacked nothing")
    worst_case_mAP: float = column("**the headline**: mAP of the per-query worst case of the suite named in `suite` "
                                   "at 8/255")
    worst_case_R1: float = column("rank-1 of the same per-query worst case")
    suite: str = _as_on_board("suite")
    worst_case_mAP_2x: float = column("the convergence check: `worst_case_mAP` with doubled APGD iterations")
    worst_case_all_mAP: float = column("per-query worst case over every attack of the run and the suite")
    attacks: int = column("how many single attacks the run made at this ε")
    robust_mAP_mean: float = column("mean mAP over the single attacks")
    robust_mAP_worst: float = column("lowest mAP of a single attack: an upper bound on the worst case, kept for "
                                     "comparison")
    worst_attack: str = column("the single attack with the lowest mAP")
    unseen_mAP_mean: float = column("mean mAP over the attacks the defense never trained on")
    unseen_mAP_worst: float = column("lowest mAP over the attacks the defense never trained on")
    seen_mAP_mean: float = column("mean mAP over the attacks the defense trained on")
    seen_mAP_worst: float = column("lowest mAP over the attacks the defense trained on")
    whitebox_R1_mean: float = column("mean rank-1 over the white-box single attacks")
    attacked_id_ap_var_mean: float = column("mean `id_ap_var` over the single attacks")
    flags: str = _as_on_board("flags")
    train_seconds: float = _as_on_board("train_seconds")
    attacked_with: str = _as_on_board("attacked_with")
    run_id: str = _as_on_board("run_id")
    git_commit: str = _as_on_board("git_commit")
    train_commit: str = _as_on_board("train_commit")
    checkpoint: str = _as_on_board("checkpoint")
    device: str = _as_on_board("device")
    torch_version: str = _as_on_board("torch_version")
    date: str = _as_on_board("date")
    command: str = column("the command of the run: it reproduces every number of the row")
    clean_mAP_low: float = column("95 % bootstrap interval of `clean_mAP` over queries, resampling identities: lower "
                                  "end", math.nan)
    clean_mAP_high: float = column("upper end of the same interval", math.nan)
    worst_case_mAP_low: float = column("95 % bootstrap interval of `worst_case_mAP`, resampling identities: lower "
                                       "end", math.nan)
    worst_case_mAP_high: float = column("upper end of the same interval", math.nan)
    worst_case_R1_low: float = column("95 % bootstrap interval of `worst_case_R1`: lower end", math.nan)
    worst_case_R1_high: float = column("upper end of the same interval", math.nan)
    data_seed: str = column("seed that drew the data set; the protocol's test set is data seed 0, any other is named "
                            "in `settings` (`data-seed=N`), except on rows made before `--data-seed`, whose training "
                            "seed drew the data: those stay on the board but share no mean, table or figure with "
                            "rows on another test set", "")
    model_digest: str = _as_on_board("model_digest", "")


@dataclass
class ThroughputRow:
    """One measured rate of `python -m benchmark throughput` (`throughput-<device>-torch<version>.csv`)."""

    kind: str = column("`extract` (one forward pass), `attack` (one gradient step or query) or `train-step`")
    name: str = column("the backbone, attack or defense measured")
    backbone: str = column("the backbone the attack or training step ran on")
    batch_size: int = column("images per batch, after halving on running out of memory")
    images_per_second: float = column("images per second; for attacks image-iterations per second")
    input: str = column("input size, height x width")
    amp: str = column("mixed precision (`off`, `bf16`, `fp16`); attacks always run in float32")
    device: str = _as_on_board("device")
    torch_version: str = _as_on_board("torch_version")
    git_commit: str = _as_on_board("git_commit")
    date: str = _as_on_board("date")
    command: str = _as_on_board("command")


TEXT_COLUMNS = tuple(f.name for f in fields(LeaderboardRow) if f.type == "str")
SUMMARY_TEXT = ("dataset", "train_dataset", "defense", "backbone", "settings", "eps", "worst_attack", "flags", "suite",
                "attacked_with", "run_id", "git_commit", "train_commit", "device", "torch_version", "date",
                "command", "checkpoint", "data_seed")


def neutralise(value: object) -> object:
    """Prefix text that a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def board_paths(directory: str | Path, dataset: str, official: bool) -> tuple[Path, Path]:
    """(board, summary) CSV paths: official boards in `directory`, custom ones in `directory/custom`."""
    base = Path(directory) if official else Path(directory) / "custom"
    return base / f"{dataset}.csv", base / f"summary-{dataset}.csv"


def seeds_path(summary_path: Path) -> Path:
    """The seed-aggregated board beside a summary board: `seeds-<dataset>.csv`."""
    return summary_path.parent / summary_path.name.replace("summary-", "seeds-", 1)


#: one recipe (a model without its seed)
RECIPE = ("dataset", "train_dataset", "defense", "backbone", "settings")
SEED_GROUP = (*RECIPE, "suite")
SEED_METRICS = ("clean_mAP", "worst_case_mAP", "worst_case_R1", "robust_mAP_mean")
#: metrics whose query-bootstrap interval the seeds board gives beside the training-seed sd
SEED_INTERVALS = ("clean_mAP", "worst_case_mAP")


def seed_columns() -> list[str]:
    """The number columns of the seeds board after `n` and `seeds`, in order."""
    out = []
    for metric in SEED_METRICS:
        out += [f"{metric}_mean", f"{metric}_sd"]
        if metric in SEED_INTERVALS:
            out += [f"{metric}_ci_low", f"{metric}_ci_high"]
    return out


def seed_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe over its seeds: mean, sample standard deviation and n of the headline numbers.

    `vs_best` compares each recipe's worst-case mean with the best one on the same data set and suite, the best
    being the highest mean among the recipes with the most seeds, and calls a difference real only when it
    exceeds the two seed spreads added (±1 sd bars that do not touch); with one seed there is no spread, and
    nothing is called. Where the two seed sets differ, the
    gap on the seeds both have follows. Rows on another test set than their recipe's (`on_recipe_test_set`:
    made before `--data-seed` with a training seed other than 0) are left out: a mean never mixes test sets.
    """
    if summary.empty or "worst_case_mAP" not in summary:
        return pd.DataFrame()
    frame = summary[on_recipe_test_set(summary)].copy()
    if frame.empty:
        return pd.DataFrame()
    frame = with_single_attacks(frame, frame)  # a suite-only run's row: its model's single attacks
    for col in SEED_GROUP:
        frame[col] = frame[col].fillna("").astype(str) if col in frame else ""
    rows, worst_by_seed = [], []
    for key, group in frame.groupby(list(SEED_GROUP), sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(SEED_GROUP, key, strict=True))
        worst_by_seed.append(group.set_index(group["seed"].astype(int))["worst_case_mAP"].astype(float))
        row["n"] = len(group)
        row["seeds"] = ",".join(str(int(s)) for s in sorted(group["seed"]))
        for metric in SEED_METRICS:
            values = group[metric].astype(float) if metric in group else pd.Series(dtype=float)
            row[f"{metric}_mean"] = float(values.mean()) if values.notna().any() else math.nan
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if values.notna().sum() > 1 else math.nan
            if metric in SEED_INTERVALS:
                row.update(_mean_interval(group, metric))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["vs_best"] = ""
    for _, idx in out.groupby(["dataset", "suite"]).groups.items():  # worst cases of one suite compare
        block = out.loc[idx]
        # the reference has the most seeds: a one-seed recipe that happens to top the means would make every
        # comparison 'not separable'
        ranked = block.loc[block["n"] == block["n"].max(), "worst_case_mAP_mean"].dropna()
        if ranked.empty:
            continue
        top = ranked.idxmax()
        for i in idx:
            out.at[i, "vs_best"] = _versus(out.loc[i], out.loc[top]) + (
                "" if i == top else _on_shared_seeds(worst_by_seed[i], worst_by_seed[top]))
    return out.sort_values(["dataset", "worst_case_mAP_mean"], ascending=[True, False], na_position="last"
                           ).reset_index(drop=True)


def _mean_interval(group: pd.DataFrame, metric: str) -> dict[str, float]:
    """The query-sampling interval beside the seed sd: the mean of the seeds' own 95 % intervals' ends (each a
    bootstrap over the test identities; on one fixed test set the seeds share their queries, so the ends
    move together). Empty when a seed has no interval (rows made before intervals were recorded)."""
    ends = {}
    for end in ("low", "high"):
        values = group[f"{metric}_{end}"].astype(float) if f"{metric}_{end}" in group else None
        recorded = values is not None and values.notna().all()
        ends[f"{metric}_ci_{end}"] = float(values.mean()) if recorded else math.nan
    return ends


def _on_shared_seeds(row: pd.Series, best: pd.Series) -> str:
    """The gap within the seeds both recipes have: on two or more, its paired 95 % interval and verdict;
    on one, the plain gap where the seed sets differ. On rows made before `--data-seed` a seed also drew the
    data set, so a seed easier for both moved both means together: the sd rule counts that as noise, the
    differences within a seed do not contain it."""
    shared = sorted(set(row.index) & set(best.index))
    if not shared:
        return "; no seed in common with the best"
    gaps = best[shared] - row[shared]
    seeds = ",".join(str(s) for s in shared)
    if len(shared) >= 2:
        low, high = paired_interval(gaps)
        return (f"; paired on seeds {seeds}: best - this {float(gaps.mean()):.2f} (95 % CI {low:.2f} to "
                f"{high:.2f}): {paired_verdict(low, high)}")
    if set(row.index) == set(best.index):
        return ""
    gap = float(gaps.mean())
    return f"; on the seeds both have ({seeds}): {abs(gap):.2f} {'below' if gap >= 0 else 'above'}"


def _versus(row: pd.Series, best: pd.Series) -> str:
    if row["defense"] == best["defense"] and row["settings"] == best["settings"]:
        return "best"
    gap = best["worst_case_mAP_mean"] - row["worst_case_mAP_mean"]
    if math.isnan(gap):
        return ""
    spread = row["worst_case_mAP_sd"] + best["worst_case_mAP_sd"]
    where = f"{gap:.2f} below the best" if gap >= 0 else f"{-gap:.2f} above the best"
    if math.isnan(spread):
        which = "this recipe" if math.isnan(row["worst_case_mAP_sd"]) else "the best"
        return f"{where}; not separable ({which} has one seed)"
    called = verdict(abs(gap), row["worst_case_mAP_sd"], best["worst_case_mAP_sd"])
    return f"{where}, seed sds add to {spread:.2f}: {called}"


def csv_text(frame: pd.DataFrame) -> str:
    """A board as its file holds it (four decimals, Unix line ends)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.4f", lineterminator="\n")
    return buffer.getvalue()


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Atomic CSV write with normal permissions."""
    atomic_write_text(path, csv_text(frame))


def read_board(path: str | Path, text: Iterable[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """Read a board with text columns kept as text (a commit like 012345678901 keeps its zero)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    header = pd.read_csv(path, nrows=0).columns
    text_cols = [c for c in text if c in header]
    frame = pd.read_csv(path, dtype={c: str for c in text_cols})
    for c in text_cols:
        frame[c] = frame[c].fillna("").astype(str)
    return frame


def board_kind(path: Path) -> str:
    """Which board a CSV is, by its name: `summary`, `seeds`, `throughput` or `row` (`<dataset>.csv`)."""
    return next((k for k in ("summary", "seeds", "throughput") if path.name.startswith(f"{k}-")), "row")


def _schema(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, numeric) columns of a board kind."""
    def numeric(row_type: type) -> tuple[str, ...]:
        return tuple(f.name for f in fields(row_type) if f.type in ("float", "int"))

    if kind == "seeds":  # boards written before the suite was part of the key have no suite column
        return (*RECIPE, "n", "worst_case_mAP_mean"), ("n", *seed_columns())
    if kind == "throughput":
        return ("kind", "name", "images_per_second"), numeric(ThroughputRow)
    if kind == "summary":
        return (*MODEL_KEY, "clean_mAP", "run_id", "date"), numeric(SummaryRow)
    return (*ROW_KEY, "mAP", "seen", "run_id", "date"), numeric(LeaderboardRow)


def check_board(path: Path) -> None:
    """Refuse, in one line naming the file, line and column, a board a reader cannot trust: empty, a column
    missing, or a number that is not one. Readers (site, table, plots, merge) check before any work."""
    fix = "restore it from git or from the run folders, or remove the row (boards are written by run and publish)"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{path}: not a readable CSV board ({str(exc).splitlines()[0]}); {fix}") from None
    kind = board_kind(path)
    if kind == "seeds" and frame.empty:  # rebuilt from a summary whose runs have no suite yet
        return
    required, numeric = _schema(kind)
    missing = [c for c in required if c not in frame]
    if frame.empty or missing:
        what = "has no rows" if not missing else f"is not a leaderboard (no column {', '.join(missing)})"
        raise BenchmarkError(f"{path} {what}; {fix}")
    if "dataset" in frame:  # it names board files: never a path
        bad_name = ~frame["dataset"].str.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
        if bad_name.any():
            raise BenchmarkError(f"{path}, line {int(bad_name.idxmax()) + 2}, column dataset: "
                                 f"{frame.at[bad_name.idxmax(), 'dataset']!r} is not a data set name; {fix}")
    for column in (c for c in numeric if c in frame):
        text = frame[column].str.strip().str.lstrip("'")
        values = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = values.isna() & (text != "") & ~text.str.lower().isin(("nan", "inf", "-inf"))
        if column in ("seed", "n", "num_queries", "attacks", "batch_size"):
            bad |= values.notna() & (values != values.round())
        if bad.any():
            line = int(bad.idxmax()) + 2  # the header is line 1
            raise BenchmarkError(f"{path}, line {line}, column {column}: {frame.at[bad.idxmax(), column]!r} is not "
                                 f"a{'n integer' if column in ('seed', 'n') else ' number'}; {fix}")


def check_boards(folder: Path) -> list[Path]:
    """Check every board in a folder (and its `custom/`); returns them."""
    boards = sorted([*folder.glob("*.csv"), *(folder / "custom").glob("*.csv")])
    for board in boards:
        check_board(board)
    return boards


def _keys(frame: pd.DataFrame, key: tuple[str, ...]) -> pd.Series:
    return frame[list(key)].astype(str).agg("|".join, axis=1)


def upsert(path: Path, records: Iterable[dict], key: tuple[str, ...],
           then: Callable[[pd.DataFrame], None] | None = None,
           keep_old: Callable[[pd.Series, pd.Series], bool] | None = None,
           text: Iterable[str] = TEXT_COLUMNS, order: tuple[str, bool] | None = None,
           resolve: Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]] | None = None,
           ) -> pd.DataFrame:
    """Replace rows with the same key and add new ones; safe against concurrent writers.

    `resolve(old, new)` drops rows of either side before keys are compared (a superseded training);
    `keep_old(old, new)` may veto a replacement; `then` runs on the merged board while the lock
    is still held (derived files stay consistent); `order` = (column, descending) sorts rows by a
    score within each data set instead of by key.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([{k: neutralise(v) for k, v in r.items()} for r in records])
    with FileLock(str(path) + ".lock", timeout=600):
        old = read_board(path, text)
        for col in key:
            if not new.empty and col not in new:
                new[col] = ""
            if not old.empty and col not in old:
                old[col] = ""
        if resolve is not None and not old.empty and not new.empty:
            kept_old, kept_new = resolve(old, new)
            if len(kept_old) < len(old) or len(kept_new) < len(new):
                log.info("%s: rows of a superseded checkpoint dropped (%d on the board, %d incoming)", path.name,
                         len(old) - len(kept_old), len(new) - len(kept_new))
            old, new = kept_old, kept_new
        if not old.empty and not new.empty:
            old_keys, new_keys = _keys(old, key), _keys(new, key)
            if keep_old is not None:
                old_by_key = dict(zip(old_keys, old.index, strict=True))
                vetoed = [i for i, k in zip(new.index, new_keys, strict=True)
                          if k in old_by_key and keep_old(old.loc[old_by_key[k]], new.loc[i])]
                new = new.drop(index=vetoed)
                new_keys = _keys(new, key) if not new.empty else pd.Series(dtype=str)
            old = old[~old_keys.isin(set(new_keys))]
        frames = [f for f in (old, new) if not f.empty]
        merged = pd.concat(frames, ignore_index=True) if frames else new
        if not merged.empty:
            merged = merged.sort_values(list(key), kind="stable").reset_index(drop=True)
            if order is not None and order[0] in merged:
                merged = merged.sort_values(["dataset", order[0]], ascending=[True, not order[1]], kind="stable",
                                            na_position="last").reset_index(drop=True)
        write_csv(merged, path)
        if then is not None:
            then(merged)
    return merged


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def _at(frame: pd.DataFrame, column: str, default: float = math.nan) -> float:
    return float(frame[column].iloc[0]) if len(frame) and column in frame else default


def eps_units(label: str) -> float:
    """A board's ε label in units of 1/255, for ordering and plotting: '8/255' -> 8.0 (the label holds the exact ε;
    `eps_value` is rounded in the CSV)."""
    return float(str(label).split("/")[0])


def per_query_column(attack: str, eps: str, score: str = "ap") -> str:
    """A run's `per_query.csv` column of one (attack, ε label) cell: `standard-v3@8/255_ap`, `fna@8/255_r1`."""
    return f"{attack}@{eps}_{score}"


def rows_of_model(board: pd.DataFrame, summary_row: pd.Series) -> pd.DataFrame:
    """The board's rows for the trained model a summary row describes, whichever run wrote them.

    A row's key is its full specification, so a single attack rerun later on the same checkpoint (an
    ε sweep) is the board's result for that model; rows are matched by checkpoint, or by run when a
    row has none.
    """
    same = pd.Series(True, index=board.index)
    for column in MODEL_KEY:  # compared per column, not as joined text: a seed may be 0 on one side, 0.0 on the other
        same &= board[column] == summary_row[column]
    checkpoint = summary_row.get("checkpoint", "")
    if isinstance(checkpoint, str) and checkpoint and "checkpoint" in board:
        return board[same & trained_as(board, summary_row.to_frame().T)]
    return board[same & (board["run_id"] == summary_row["run_id"])]


def summarise_run(run: pd.DataFrame) -> dict[str, Any]:
    """The summary row of ONE run: clean scores, the suite's per-query worst case (the headline), robust
    mAP over all, seen and unseen attacks, flags.

    `worst_case_mAP` / `_R1` come from the run's suite at the standard ε; `worst_case_all_mAP` is the
    per-query worst case over every attack of the run; the means (`robust_mAP_mean` ...) are over the
    individual attacks and `robust_mAP_worst` is the minimum of their means (an upper bound).
    """
    first = run.iloc[0]
    clean = run[run["seen"] == Seen.CLEAN.value]
    aggregate = run[run["seen"] == Seen.WORST_CASE.value]
    attacked = run[~run["seen"].isin([Seen.CLEAN.value, Seen.WORST_CASE.value])]
    default_eps = attacked[attacked["eps"] == STANDARD_EPS]
    scope = default_eps if len(default_eps) else attacked
    suite_name = str(first.get("suite", "") or "")
    at_eps = aggregate[aggregate["eps"] == STANDARD_EPS]
    suite_row = at_eps[at_eps["attack"] == suite_name] if suite_name else at_eps.iloc[:0]
    all_row = at_eps[at_eps["attack"] == WORST_CASE]
    unseen = scope[scope["seen"] == Seen.UNSEEN.value]
    seen = scope[scope["seen"] == Seen.SEEN.value]
    white = scope[scope["knowledge"] == "white-box"]
    return dataclasses.asdict(SummaryRow(
        **{k: first[k] for k in MODEL_KEY},
        clean_mAP=float(clean["mAP"].iloc[0]) if len(clean) else math.nan,
        clean_R1=float(clean["R1"].iloc[0]) if len(clean) else math.nan,
        clean_id_ap_var=float(clean["id_ap_var"].iloc[0]) if len(clean) else math.nan,
        eps=STANDARD_EPS if len(default_eps) or len(suite_row) else ("all" if len(attacked) else "-"),
        worst_case_mAP=_at(suite_row, "mAP"),
        worst_case_R1=_at(suite_row, "R1"),
        suite=suite_name if len(suite_row) else "",
        worst_case_mAP_2x=_at(suite_row, "mAP_2x"),
        worst_case_all_mAP=_at(all_row, "mAP", _at(suite_row, "mAP")),
        attacks=len(scope),
        robust_mAP_mean=_mean(scope["mAP"]),
        robust_mAP_worst=float(scope["mAP"].min()) if len(scope) else math.nan,
        worst_attack=str(scope.loc[scope["mAP"].idxmin(), "attack"]) if len(scope) else "",
        unseen_mAP_mean=_mean(unseen["mAP"]),
        unseen_mAP_worst=float(unseen["mAP"].min()) if len(unseen) else math.nan,
        seen_mAP_mean=_mean(seen["mAP"]),
        seen_mAP_worst=float(seen["mAP"].min()) if len(seen) else math.nan,
        whitebox_R1_mean=_mean(white["R1"]),
        attacked_id_ap_var_mean=_mean(scope["id_ap_var"]),
        flags=first["flags"] if isinstance(first["flags"], str) else "",
        train_seconds=first["train_seconds"], attacked_with=first["attacked_with"],
        run_id=first["run_id"], git_commit=first["git_commit"], train_commit=first.get("train_commit", ""),
        checkpoint=first.get("checkpoint", ""), device=first["device"],
        torch_version=first["torch_version"], date=first["date"], command=first["command"],
        clean_mAP_low=_at(clean, "mAP_low"), clean_mAP_high=_at(clean, "mAP_high"),
        worst_case_mAP_low=_at(suite_row, "mAP_low"), worst_case_mAP_high=_at(suite_row, "mAP_high"),
        worst_case_R1_low=_at(suite_row, "R1_low"), worst_case_R1_high=_at(suite_row, "R1_high"),
        data_seed=text_cell(first.get("data_seed")), model_digest=text_cell(first.get("model_digest")),
    ))


def text_cell(value: Any) -> str:
    """A text cell: empty for a missing or NaN value; a number read from CSV as 0.0 back to '0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def on_recipe_test_set(frame: pd.DataFrame) -> pd.Series:
    """Rows scored on the test set their recipe names: data seed 0, the protocol's, unless `settings` names another
    (`data-seed=N`). A row made before `--data-seed` drew its data with its training seed under standard settings;
    with a seed other than 0 it is on another test set, and shares no mean, table or figure with the others."""
    if frame.empty:
        return pd.Series(True, index=frame.index)
    seeds = frame["seed"].map(text_cell) if "seed" in frame else pd.Series("0", index=frame.index)
    recorded = frame["data_seed"].map(text_cell) if "data_seed" in frame else pd.Series("", index=frame.index)
    data_seed = recorded.where(recorded.ne(""), seeds)
    named = frame["settings"].fillna("").astype(str).str.contains("data-seed=") if "settings" in frame else False
    return data_seed.eq("0") | named


def _covers_more(old: pd.Series, new: pd.Series) -> bool:
    """Keep the old summary when its run covered more at the standard ε (suite first, then attacks) than the new one."""
    rank = {STANDARD_EPS: 2, "all": 1}

    def cover(row: pd.Series) -> tuple[int, int, int]:
        has_suite = int(isinstance(row.get("suite", ""), str) and bool(row.get("suite", "")))
        return rank.get(str(row["eps"]), 0), has_suite, int(row["attacks"])

    return cover(old) > cover(new)


def _keeps_suite_worst_case(old: pd.Series, new: pd.Series) -> bool:
    """A per-query worst case that includes a suite is never replaced by one without it (e.g. an ε sweep's)."""
    def has_suite(row: pd.Series) -> bool:
        return isinstance(row.get("suite", ""), str) and bool(row.get("suite", ""))

    return str(old.get("attack")) == WORST_CASE and has_suite(old) and not has_suite(new)


def _trained_at(frame: pd.DataFrame) -> pd.Series:
    """When each row's checkpoint was trained (`train_date`; a summary row has only its run's `date`)."""
    for col in ("train_date", "date"):
        if col in frame:
            return frame[col].fillna("").astype(str)
    return pd.Series("", index=frame.index)


def training_identity(frame: pd.DataFrame) -> pd.Series:
    """Which trained model each row measured: its model digest where any row of its checkpoint records one, else
    its checkpoint key; '' where the row records neither (older boards).

    Two checkpoint keys with one digest are one model: a key also hashes training code, so a change that leaves
    the weights and the forward as they were (a refactor, a faster loop with the same bits) gives a new key but
    the same model, whose published rows stay with it.
    """
    def text(column: str) -> list[str]:
        return [text_cell(v) for v in frame[column]] if column in frame else [""] * len(frame)

    keys, digests = text("checkpoint"), text("model_digest")
    known = {k: d for k, d in zip(keys, digests, strict=True) if k and d}
    return pd.Series([f"model:{known.get(k) or d}" if (k in known or (not k and d)) else k
                      for k, d in zip(keys, digests, strict=True)], index=frame.index, dtype=object)


def trained_as(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.Series:
    """Which rows of `frame` measured a model that a row of `reference` measured (`training_identity`, computed
    over both, so a digest known on either side joins keys); every row when `reference` records no training."""
    identity = training_identity(pd.concat([frame, reference], ignore_index=True))
    models = set(identity.iloc[len(frame):]) - {""}
    if not models:
        return pd.Series(True, index=frame.index)
    return pd.Series(identity.iloc[:len(frame)].isin(models).to_numpy(), index=frame.index)


def newest_training(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep, per model, only the rows of its most recently trained checkpoint (ties: the incoming one).

    Rows without a checkpoint (older boards) are left alone. Either side can lose rows: a run on a new
    training supersedes the board's, and merging an older run never overwrites a newer training.
    """
    if "checkpoint" not in old or "checkpoint" not in new:
        return old, new
    both = pd.concat([old.assign(_side=0), new.assign(_side=1)], ignore_index=True)
    both["_model"] = _keys(both, MODEL_KEY)
    both["_ckpt"] = training_identity(both)
    both["_when"] = _trained_at(both)
    known = both[both["_ckpt"] != ""]
    latest = known.groupby(["_model", "_ckpt"], sort=False).agg(when=("_when", "max"), side=("_side", "max"))
    winner = latest.reset_index().sort_values(["when", "side"], kind="stable").groupby("_model").tail(1)
    best = both["_model"].map(dict(zip(winner["_model"], winner["_ckpt"], strict=True)))
    keep = ((both["_ckpt"] == "") | (both["_ckpt"] == best)).to_numpy()
    return old[keep[:len(old)]], new[keep[len(old):]]


def upsert_rows(board_path: Path, records: list[dict]) -> None:
    """Upsert result rows into a board: same key replaces, except a suite's worst case is never lost;
    a model keeps only the rows of its newest training."""
    upsert(board_path, records, ROW_KEY, keep_old=_keeps_suite_worst_case,
           resolve=newest_training)


def suite_rows_win(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model's summary row without a suite goes once the model has one with a suite, on either side."""
    def suiteless(frame: pd.DataFrame) -> pd.Series:
        return frame["suite"].fillna("").astype(str).eq("") if "suite" in frame else pd.Series(True, frame.index)

    with_suite = set(_keys(old[~suiteless(old)], MODEL_KEY)) | set(_keys(new[~suiteless(new)], MODEL_KEY))
    return tuple(frame[~(suiteless(frame) & _keys(frame, MODEL_KEY).isin(with_suite))]  # type: ignore[return-value]
                 for frame in (old, new))


def _summary_resolve(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return suite_rows_win(*newest_training(old, new))


def headline_rows(frame: pd.DataFrame, key: tuple[str, ...] = RECIPE, suite: str = HEADLINE_SUITE) -> pd.DataFrame:
    """The rows of ONE suite per comparison, so no table, mean, rank or figure mixes two suites' worst cases.

    Per data set, every recipe (`key`) of `frame` shows the same suite: the headline suite when it covers every
    recipe's models (each training seed the recipe has a suite row for), else the newest suite that does (names
    sort by version), so a new suite takes over a table only once every model in it has been measured with it.
    Without such a suite each recipe shows its own (the headline where it covers the recipe, else the newest
    that does, else its newest). Rows of runs without a suite stay (a model has one only when it has no suite
    row). Select the rows to compare first, then call this.
    """
    if frame.empty or "suite" not in frame:
        return frame
    suites = frame["suite"].fillna("").astype(str)
    with_suite = frame[suites.ne("")]
    preference = [suite, *sorted(set(suites) - {suite, ""}, reverse=True)]
    covered = _seeds_of(with_suite)
    recipe = _keys(with_suite, key)
    dataset = with_suite["dataset"].astype(str) if "dataset" in with_suite else pd.Series("", index=with_suite.index)
    chosen = pd.Series("", index=frame.index)
    for _, rows in with_suite.groupby(dataset, sort=False):
        complete, present = {}, {}
        for name, mine in rows.groupby(recipe[rows.index], sort=False):
            seeds_by_suite = {s: set().union(*covered[g.index]) for s, g in mine.groupby(suites[mine.index])}
            every = set().union(*seeds_by_suite.values())
            complete[name] = {s for s, seeds in seeds_by_suite.items() if seeds == every}
            present[name] = set(seeds_by_suite)
        common = next((s for s in preference if all(s in c for c in complete.values())), None)
        for name in complete:
            own = common or next((s for s in preference if s in complete[name]), None) \
                or next(s for s in preference if s in present[name])
            chosen.loc[rows.index[(recipe[rows.index] == name).to_numpy()]] = own
    return frame[suites.eq(chosen) | suites.eq("")]


def is_variant(defenses: pd.Series | pd.Index) -> np.ndarray:
    """Defense labels with options, e.g. ddid[ablate=fnes]: ablation variants, compared apart from the standard
    recipes (their own tables, figures and site section)."""
    return np.asarray(pd.Series(defenses).astype(str).str.contains("[", regex=False), dtype=bool)


#: a summary row's fields about its run's single attacks (not its suite)
SINGLE_ATTACK_FIELDS = ("attacks", "robust_mAP_mean", "robust_mAP_worst", "unseen_mAP_mean", "unseen_mAP_worst")


def summary_on_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The summary rows a table, page or figure shows, each with its model's single attacks (`with_single_attacks`).

    `headline_rows` picks one suite per comparison; the standard recipes and the ablation variants
    (`is_variant`) are compared apart, so a variant measured with an older suite only does not hold the
    standard recipes back on it. Rows keep their order in `frame`.
    """
    if frame.empty or "defense" not in frame:
        return with_single_attacks(headline_rows(frame), frame)
    variant = is_variant(frame["defense"])
    kept = [headline_rows(part).index for part in (frame[~variant], frame[variant]) if not part.empty]
    return with_single_attacks(frame[frame.index.isin(kept[0].append(kept[1:]))], frame)


def with_single_attacks(shown: pd.DataFrame, every: pd.DataFrame) -> pd.DataFrame:
    """`shown` (rows of `every`) with each model's single-attack fields taken from its row in `every` (any suite)
    that covered the most single attacks, and the flags of both rows.

    A suite-only run (`--attack standard-v3` on a checkpoint already attacked) summarises no single attack,
    yet the model's single attacks are on the board: its row on view should say what they gave. Models are
    told apart as `rows_of_model` does: by model key and training, by run where a row records no training.
    """
    if shown.empty or "attacks" not in shown or "attacks" not in every:
        return shown
    count = pd.to_numeric(every["attacks"], errors="coerce").fillna(0)
    identity = training_identity(every)
    run = "run:" + every["run_id"].astype(str) if "run_id" in every else pd.Series("", index=every.index)
    model = every[list(MODEL_KEY)].astype(str).agg("\x1f".join, axis=1) + "\x1f" + identity.where(identity.ne(""), run)
    best = count.groupby(model, sort=False).idxmax()
    shown = shown.copy()
    for index in shown.index:
        source = every.loc[best[model[index]]]
        if count[source.name] <= count[index]:
            continue
        for field in SINGLE_ATTACK_FIELDS:
            if field in shown:
                shown.at[index, field] = source[field]
        if "flags" in shown:
            codes = [c for c in (*str(shown.at[index, "flags"]).split(";"), *str(source["flags"]).split(";"))
                     if c and c != "nan"]
            shown.at[index, "flags"] = ";".join(dict.fromkeys(codes))
    return shown


def _seeds_of(frame: pd.DataFrame) -> pd.Series:
    """The training seeds each row covers: its `seed`, or the seeds board's `seeds` list; {''} without either."""
    if "seed" in frame:
        return frame["seed"].map(lambda v: {text_cell(v)})
    if "seeds" in frame:
        return frame["seeds"].map(lambda v: set(text_cell(v).split(",")))
    return pd.Series([{""}] * len(frame), index=frame.index)


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary board's rows on their recipe's test set (`on_recipe_test_set`), every suite: select the rows a
    table, page or figure compares, then `headline_rows` keeps one suite for all of them."""
    frame = read_board(path, SUMMARY_TEXT)
    return frame[on_recipe_test_set(frame)]


def upsert_summaries(summary_path: Path, summaries: list[dict]) -> None:
    """Upsert per-run summary rows, one per model and suite (the newest training of a model wins; among runs
    of one checkpoint and suite the one covering more attacks; a row with a suite replaces one without) and
    rebuild the seeds board beside."""
    upsert(summary_path, summaries, SUMMARY_KEY, keep_old=_covers_more, text=SUMMARY_TEXT,
           order=("worst_case_mAP", True), resolve=_summary_resolve,
           then=lambda merged, path=summary_path: write_csv(seed_summary(merged), seeds_path(path)))


def write_leaderboards(rows: list[LeaderboardRow], directory: str | Path, official: bool = True) -> dict[str, Path]:
    """Upsert one run's rows into its board and its summary row into the summary board."""
    out: dict[str, Path] = {}
    for dataset in sorted({r.dataset for r in rows}):
        board_path, summary_path = board_paths(directory, dataset, official)
        records = [dataclasses.asdict(r) for r in rows if r.dataset == dataset]
        upsert_rows(board_path, records)
        upsert_summaries(summary_path, [summarise_run(pd.DataFrame(records).fillna({"flags": ""}))])
        kind = "leaderboard" if official else "custom leaderboard"
        out[f"{kind} {dataset}"] = board_path
        out[f"summary {dataset}"] = summary_path
    return out
