"""CSV leaderboards: one schema dataclass per row, upserted by key under a file lock, written atomically.

`leaderboards/<dataset>.csv`: one row per defense x backbone x attack x eps (x train set x seed).
`leaderboards/summary-<dataset>.csv`: one row per defense x backbone (x train set x seed),
recomputed from the full board after every write so the two never disagree.
Columns are documented in `leaderboards/README.md`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from filelock import FileLock

from benchmark.enums import Seen

ROW_KEY = ("dataset", "train_dataset", "defense", "backbone", "attack", "eps", "seed")
SUMMARY_KEY = ("dataset", "train_dataset", "defense", "backbone", "seed")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class LeaderboardRow:
    dataset: str
    train_dataset: str
    defense: str
    backbone: str
    attack: str               # registry name, or "clean"
    eps: str                  # "8/255"; "0" for the clean row
    eps_value: float
    family: str
    knowledge: str
    seen: str                 # clean / seen / unseen
    attacked_with: str        # direct, or bpda through an input transform
    clean_mAP: float
    clean_R1: float
    mAP: float
    R1: float
    R5: float
    R10: float
    mINP: float
    mAP_drop: float           # clean_mAP - mAP
    id_ap_var: float          # variance of per-identity AP (percent^2)
    id_ap_worst10: float      # mean AP of the worst 10 % identities
    clean_id_ap_var: float
    num_queries: int
    attack_seconds: float
    queries_per_image: float  # query-based attacks only, else NaN
    flags: str                # sanity flags of this defense run, ';'-separated
    train_seconds: float
    run_id: str
    seed: int
    package_version: str
    torch_version: str
    git_commit: str
    device: str
    date: str
    command: str


def columns() -> list[str]:
    return [f.name for f in fields(LeaderboardRow)]


def neutralise(value: object) -> object:
    """Prefix text that a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def _atomic_write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False, float_format="%.4f")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> pd.DataFrame:
    if path.is_file() and path.stat().st_size > 0:
        return pd.read_csv(path, keep_default_na=True)
    return pd.DataFrame()


def upsert(path: Path, records: Iterable[dict], key: tuple[str, ...],
           then: Callable[[pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Replace rows with the same key and add new ones; safe against concurrent writers.

    `then` runs on the merged board while the lock is still held (derived files stay consistent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([{k: neutralise(v) for k, v in r.items()} for r in records])
    with FileLock(str(path) + ".lock", timeout=600):
        old = _read(path)
        if not old.empty and not new.empty:
            new_keys = set(new[list(key)].astype(str).agg("|".join, axis=1))
            old = old[~old[list(key)].astype(str).agg("|".join, axis=1).isin(new_keys)]
        frames = [f for f in (old, new) if not f.empty]
        merged = pd.concat(frames, ignore_index=True) if frames else new
        merged = merged.sort_values(list(key), kind="stable").reset_index(drop=True)
        _atomic_write_csv(merged, path)
        if then is not None:
            then(merged)
    return merged


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def summarise(board: pd.DataFrame) -> pd.DataFrame:
    """One row per defense run: clean scores, robust mAP over seen and unseen attacks, flags."""
    rows = []
    if board.empty:
        return pd.DataFrame()
    for key, group in board.groupby(list(SUMMARY_KEY), dropna=False, sort=True):
        clean = group[group["seen"] == Seen.CLEAN.value]
        attacked = group[group["seen"] != Seen.CLEAN.value]
        default_eps = attacked[attacked["eps"] == "8/255"]
        scope = default_eps if len(default_eps) else attacked
        unseen = scope[scope["seen"] == Seen.UNSEEN.value]
        seen = scope[scope["seen"] == Seen.SEEN.value]
        white = scope[scope["knowledge"] == "white-box"]
        latest = group.sort_values("date").iloc[-1]
        rows.append({
            **dict(zip(SUMMARY_KEY, key, strict=True)),
            "clean_mAP": float(clean["mAP"].iloc[0]) if len(clean) else math.nan,
            "clean_R1": float(clean["R1"].iloc[0]) if len(clean) else math.nan,
            "clean_id_ap_var": float(clean["id_ap_var"].iloc[0]) if len(clean) else math.nan,
            "eps": "8/255" if len(default_eps) else "all",
            "attacks": len(scope),
            "robust_mAP_mean": _mean(scope["mAP"]),
            "robust_mAP_worst": float(scope["mAP"].min()) if len(scope) else math.nan,
            "worst_attack": str(scope.loc[scope["mAP"].idxmin(), "attack"]) if len(scope) else "",
            "unseen_mAP_mean": _mean(unseen["mAP"]),
            "unseen_mAP_worst": float(unseen["mAP"].min()) if len(unseen) else math.nan,
            "seen_mAP_mean": _mean(seen["mAP"]),
            "seen_mAP_worst": float(seen["mAP"].min()) if len(seen) else math.nan,
            "whitebox_R1_mean": _mean(white["R1"]),
            "attacked_id_ap_var_mean": _mean(scope["id_ap_var"]),
            "flags": latest["flags"] if isinstance(latest["flags"], str) else "",
            "train_seconds": latest["train_seconds"],
            "attacked_with": latest["attacked_with"],
            "run_id": latest["run_id"], "git_commit": latest["git_commit"], "device": latest["device"],
            "torch_version": latest["torch_version"], "date": latest["date"], "command": latest["command"],
        })
    return pd.DataFrame(rows)


def write_leaderboards(rows: list[LeaderboardRow], directory: str | Path) -> dict[str, Path]:
    """Upsert the rows into `<dataset>.csv` and rebuild `summary-<dataset>.csv`."""
    directory = Path(directory)
    out: dict[str, Path] = {}
    for dataset in sorted({r.dataset for r in rows}):
        board_path = directory / f"{dataset}.csv"
        summary_path = directory / f"summary-{dataset}.csv"
        upsert(board_path, [dataclasses.asdict(r) for r in rows if r.dataset == dataset], ROW_KEY,
               then=lambda board, p=summary_path: _atomic_write_csv(summarise(board), p))
        out[f"leaderboard {dataset}"] = board_path
        out[f"summary {dataset}"] = summary_path
    return out
