"""A static HTML leaderboard built from the committed CSV boards (`python -m benchmark site`).

Jinja2 templates, no server and nothing fetched from outside the output folder: every figure a
page shows is copied next to it. One page per data set (a sortable table, one row per defense,
seed spread over seeds), one page per run (every attack, ε curves, per-ID AP, ranking lists,
adversarial examples), one page for throughput. Flags stand next to the number they question.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from benchmark.core.atomic import TMP_PREFIX, atomic_write_text, remove_folder, sweep_stale_temps
from benchmark.core.errors import BenchmarkError
from benchmark.core.protocol import WORST_CASE
from benchmark.report.boards import (
    THROUGHPUT_UNITS,
    check_boards,
    eps_units,
    is_variant,
    on_recipe_test_set,
    summary_on_view,
)
from benchmark.report.captions import current_flags, single_attack_caption, suite_caption
from benchmark.report.records import read_json_record
from benchmark.run.spec import safe_name

#: flags that question a number other than the worst-case mAP, by code (or code prefix before ':')
FLAG_COLUMN = {"nondeterministic": "clean_mAP", "eps-rise": "unseen_mAP_worst"}
RUN_FIGURES = (("per_id_ap.png", "Per-identity AP", "AP of every test identity, clean and attacked"),
               ("ranking.png", "Ranking lists", "Top gallery matches of sample queries, clean and attacked"),
               ("adversarial.png", "Adversarial examples", "Queries, their perturbations and adversarial images"))
GROUP = ("defense", "backbone", "settings")


@dataclass(frozen=True)
class Column:
    """A table column: the CSV key, its header, whether it is text, a tooltip, decimals for numbers."""

    key: str
    label: str
    text: bool = False
    title: str = ""
    decimals: int = 2


@dataclass
class Cell:
    """A table cell: the sort value, what is shown, an optional link and the flags beside it."""

    value: str
    shown: str
    text: bool = False
    href: str = ""
    flags: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Row:
    """A table row: a key (for tests and anchors) and its cells."""

    key: str
    cells: list[Cell]


BOARD_COLUMNS = (
    Column("defense", "defense", text=True), Column("backbone", "backbone", text=True),
    Column("seeds", "seeds", decimals=0),
    Column("clean_mAP", "clean mAP"), Column("clean_R1", "clean R1"),
    Column("worst_case_mAP", "worst-case mAP", title="per-query worst case of the standard suite"),
    Column("worst_case_R1", "worst-case R1"),
    Column("worst_case_interval", "95 % interval", text=True,
           title="bootstrap interval of worst-case mAP over queries, resampling identities (runs that recorded it); "
                 "over several seeds the mean of the seeds' interval ends"),
    Column("spread", "± seeds", title="standard deviation of worst-case mAP over seeds"),
    Column("suite", "suite", text=True, title="the versioned suite the worst case comes from (one per defense: the "
                                              "headline suite where the defense has it)"),
    Column("unseen_mAP_mean", "unseen mean", title="mean mAP over attacks the defense did not train with"),
    Column("unseen_mAP_worst", "unseen worst", title="lowest mAP over single unseen attacks"),
    Column("flags", "flags", decimals=0, title="number of sanity flags; each stands next to its number"),
    Column("train_commit", "train commit", text=True), Column("git_commit", "eval commit", text=True),
    Column("date", "date", text=True),
)
#: board columns the seeds board does not aggregate: shown for single-seed recipes only
SINGLE_SEED_ONLY = ("clean_R1", "unseen_mAP_mean", "unseen_mAP_worst")
ATTACK_COLUMNS = (
    Column("attack", "attack", text=True), Column("forward", "forward", text=True),
    Column("family", "family", text=True), Column("knowledge", "knowledge", text=True),
    Column("seen", "seen", text=True), Column("mAP", "mAP"),
    Column("mAP_interval", "95 % interval", text=True, title="bootstrap interval of mAP, resampling identities"),
    Column("R1", "R1"), Column("mAP_drop", "mAP drop"),
    Column("mAP_2x", "mAP, 2x iterations"), Column("queries_per_image", "queries / image", decimals=0),
    Column("attack_seconds", "seconds", decimals=1),
)
THROUGHPUT_COLUMNS = (
    Column("kind", "kind", text=True), Column("name", "name", text=True), Column("backbone", "backbone", text=True),
    Column("rate", "rate", decimals=1), Column("unit", "unit", text=True), Column("batch_size", "batch", decimals=0),
    Column("input", "input", text=True), Column("device", "device", text=True), Column("date", "date", text=True),
)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _interval(values: Any, metric: str) -> str:
    """`low-high` of a recorded 95 % interval, or empty where the row has none."""
    low, high = _number(values.get(f"{metric}_low")), _number(values.get(f"{metric}_high"))
    return "" if low is None or high is None else f"{low:.2f}\u2013{high:.2f}"


def _unescape(text: str) -> str:
    """Undo the CSV writers' formula guard (a leading quote before = + - @)."""
    return text[1:] if len(text) > 1 and text[0] == "'" and text[1] in "=+-@" else text


def _cell(column: Column, value: Any, flags: list[dict[str, str]] | None = None, href: str = "") -> Cell:
    if column.text:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else _unescape(str(value))
        return Cell(text, text, True, href, flags or [])
    number = _number(value)
    shown = "" if number is None else f"{number:.{column.decimals}f}"
    return Cell("" if number is None else repr(number), shown, False, href, flags or [])


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    """A board as text, with any column an older board lacks added empty."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in columns:
        if column not in frame:
            frame[column] = ""
    return frame


def _flag_column(code: str, default: str) -> str:
    return FLAG_COLUMN.get(code.split(":")[0], default)


def _flag_messages(run_folder: Path) -> dict[str, str]:
    path = run_folder / "metrics.json"
    if not path.is_file():
        return {}
    flags = read_json_record(path).get("flags", [])
    return {f["code"]: f.get("message", "") for f in flags if isinstance(f, dict) and "code" in f}


class SiteBuilder:
    """Renders every page of the site into a folder from the boards and the run folders."""

    def __init__(self, leaderboard_dir: Path, results_dir: Path) -> None:
        self.boards = leaderboard_dir
        self.results = results_dir
        self.env = Environment(loader=PackageLoader("benchmark.report", "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.datasets = sorted(p.name[len("summary-"):-len(".csv")] for p in leaderboard_dir.glob("summary-*.csv"))
        self.throughput = sorted(leaderboard_dir.glob("throughput-*.csv"))
        if not self.datasets:
            raise BenchmarkError(f"no summary-*.csv board in '{leaderboard_dir}': run a benchmark first, or pass "
                                 "--leaderboard-dir with the committed boards")

    # -- helpers -------------------------------------------------------------------------------------
    def nav(self, prefix: str) -> list[dict[str, str]]:
        """Links every page shows: the index, each data set, throughput."""
        links = [{"href": f"{prefix}index.html", "label": "home"}]
        links += [{"href": f"{prefix}{d}.html", "label": d} for d in self.datasets]
        if self.throughput:
            links.append({"href": f"{prefix}throughput.html", "label": "throughput"})
        return links

    def render(self, out: Path, name: str, template: str, prefix: str = "", **context: Any) -> Path:
        """Write one page."""
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        html = self.env.get_template(template).render(nav=self.nav(prefix), generated_from=self.boards.name,
                                                      **context)
        path.write_text(html, encoding="utf-8")
        return path

    def copy_figure(self, source: Path, out: Path, target: str) -> str | None:
        """Copy a PNG into the site; its relative path, or None when the source is missing."""
        if not source.is_file():
            return None
        dest = out / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return target

    # -- pages ---------------------------------------------------------------------------------------
    def build(self, out: Path) -> list[Path]:
        """Every page; returns their paths."""
        pages = [self.index(out)]
        for dataset in self.datasets:
            pages += self.dataset_pages(out, dataset)
        if self.throughput:
            pages.append(self.throughput_page(out))
        return pages

    def index(self, out: Path) -> Path:
        """The landing page."""
        entries = []
        for dataset in self.datasets:
            summary = pd.read_csv(self.boards / f"summary-{dataset}.csv", dtype=str)
            entries.append({"href": f"{dataset}.html", "label": f"{dataset} leaderboard",
                            "note": f"{summary['defense'].nunique()} defenses"})
        if self.throughput:
            entries.append({"href": "throughput.html", "label": "throughput", "note": ""})
        return self.render(out, "index.html", "index.html.j2", title="reid-robustness-bench", pages=entries)

    def dataset_pages(self, out: Path, dataset: str) -> list[Path]:
        """The data set's board (the headline suite's rows on their recipe's test set) and one page per run on the
        recipe's test set, of any suite: the board links the headline runs, each run page its recipe's others."""
        published = _read(self.boards / f"summary-{dataset}.csv",
                          [c.key for c in BOARD_COLUMNS] + ["run_id", "eps", "suite", "data_seed"])
        published = published[on_recipe_test_set(published)]
        board_path = self.boards / f"{dataset}.csv"
        needed = [c.key for c in ATTACK_COLUMNS] + [*GROUP, "seed", "run_id", "eps", "suite", "checkpoint", "date"]
        board = _read(board_path, needed) if board_path.is_file() else None
        seeds = self.seed_rows(dataset)
        rank = [c.key for c in BOARD_COLUMNS].index("worst_case_mAP")
        summary = summary_on_view(published)
        variant = is_variant(summary["defense"])
        sections, pages = [], []
        # standard recipes and ablation variants are ranked apart, each in the one suite all its rows have
        for table_id, heading, part in (("board", "", summary[~variant]),
                                        ("variants", "Ablation variants", summary[variant])):
            if part.empty:
                continue
            rows = []
            for _, group in part.groupby(list(GROUP), sort=False):
                group = group.sort_values("seed", key=lambda s: s.astype(int))
                first = group.iloc[0]
                run_pages = [self.run_page(out, dataset, run, board, group) for _, run in group.iterrows()]
                pages += run_pages
                over_seeds = seeds.get((str(first["train_dataset"]), *(str(first[k]) for k in GROUP),
                                        str(first["suite"])))
                rows.append(self.board_row(first, group, run_pages[0].relative_to(out).as_posix(), over_seeds))
            rows.sort(key=lambda r: -(_number(r.cells[rank].value) or -1.0))
            caption = " ".join(filter(None, (suite_caption(part), single_attack_caption(part))))
            sections.append({"id": table_id, "heading": heading, "rows": rows, "caption": caption.replace("`", "")})
        for _, run in published[~published["run_id"].isin(set(summary["run_id"]))].iterrows():  # other suites
            same = (published[list(GROUP)] == run[list(GROUP)]).all(axis=1) & published["suite"].eq(run["suite"])
            pages.append(self.run_page(out, dataset, run, board, published[same]))
        figures = []
        for png in sorted((self.boards / "figures").glob(f"{dataset}-*.png")):
            target = self.copy_figure(png, out, f"figures/{png.name}")
            figures.append({"src": target, "caption": png.stem})
        eps = summary["eps"].iloc[0] if len(summary) else ""
        pages.insert(0, self.render(out, f"{dataset}.html", "board.html.j2", title=f"{dataset} leaderboard",
                                    dataset=dataset, eps=eps, columns=BOARD_COLUMNS, sections=sections,
                                    figures=figures))
        return pages

    def seed_rows(self, dataset: str) -> dict[tuple[str, ...], pd.Series]:
        """The seeds board's rows (`seeds-<dataset>.csv`, where seed statistics are computed) by recipe and suite."""
        path = self.boards / f"seeds-{dataset}.csv"
        if not path.is_file():
            return {}
        frame = _read(path, ["train_dataset", *GROUP, "n", "suite"])
        return {(str(r["train_dataset"]), *(str(r[k]) for k in GROUP), str(r["suite"])): r for _, r in frame.iterrows()}

    def board_row(self, first: pd.Series, group: pd.DataFrame, href: str, over_seeds: pd.Series | None = None
                  ) -> Row:
        """One defense. With several seeds every number is over all of them, as the seeds board has it (mean,
        and the worst-case sd as spread); columns the seeds board does not aggregate are left empty rather
        than showing one seed beside the others' mean."""
        values = dict(first)
        values["seeds"] = len(group)
        values["spread"] = None
        # an interval over one model's queries; over several seeds the spread column speaks instead
        values["worst_case_interval"] = _interval(values, "worst_case_mAP") if len(group) == 1 else ""
        if len(group) > 1:
            for key in SINGLE_SEED_ONLY:
                values[key] = None
            if over_seeds is not None:
                for key in ("clean_mAP", "worst_case_mAP", "worst_case_R1"):
                    values[key] = over_seeds.get(f"{key}_mean")
                values["spread"] = over_seeds.get("worst_case_mAP_sd")
                values["worst_case_interval"] = _interval(over_seeds, "worst_case_mAP_ci")
            else:  # a board without its seeds board: no mean is made up here
                for key in ("clean_mAP", "worst_case_mAP", "worst_case_R1"):
                    values[key] = None
        messages = _flag_messages(self.results / safe_name(str(first["run_id"])))
        flags_at: dict[str, list[dict[str, str]]] = {}
        for code in sorted({c for flags in group["flags"] for c in current_flags(flags)}):
            flags_at.setdefault(_flag_column(code, "worst_case_mAP"), []).append(
                {"code": code, "title": messages.get(code, code)})
        cells = []
        values["flags"] = len(current_flags(values.get("flags")))
        for key in ("train_commit", "git_commit"):
            values[key] = str(values.get(key, ""))[:7]
        values["date"] = str(values.get("date", ""))[:10]
        for col in BOARD_COLUMNS:
            value = values.get(col.key)
            link = href if col.key == "defense" else ""
            cells.append(_cell(col, value, flags_at.get(col.key), link))
        return Row(str(first["defense"]), cells)

    def run_page(self, out: Path, dataset: str, run: pd.Series, board: pd.DataFrame | None,
                 group: pd.DataFrame) -> Path:
        """Every attack of one run, its ε curves and its figures."""
        run_id = safe_name(str(run["run_id"]))  # a board field names no path outside the site or the results
        folder = self.results / run_id
        messages = _flag_messages(folder)
        rows_of_run = board[board["run_id"] == str(run["run_id"])] if board is not None else pd.DataFrame()
        flags = [{"code": c, "title": messages.get(c, c)} for c in current_flags(run.get("flags"))]
        rows = []
        for _, r in rows_of_run.iterrows():
            if r.get("eps") != run.get("eps") and r.get("attack") != "clean":
                continue
            attached = [f for f in flags if f["code"].split(":", 1)[-1] == r["attack"]
                        or (f["code"] == "not-converged" and r.get("attack") == r.get("suite"))]
            values = {**dict(r), "mAP_interval": _interval(r, "mAP")}
            cells = [_cell(col, values.get(col.key), attached if col.key == "mAP" else None) for col in ATTACK_COLUMNS]
            rows.append(Row(f"{r['attack']}/{r.get('forward', '')}", cells))
        curve_columns, curve_rows = self.eps_curves(board, run)
        figures = []
        for name, heading, caption in RUN_FIGURES:
            target = self.copy_figure(folder / name, out, f"runs/{run_id}/{name}")
            if target:
                figures.append({"src": f"../../{target}", "heading": heading, "caption": caption})
        other_seeds = ", ".join(f"seed {s}" for s in group["seed"] if s != run["seed"]) or "none"
        facts = [("data set", dataset), ("defense", run["defense"]), ("backbone", run["backbone"]),
                 ("seed", run["seed"]), ("other seeds on the board", other_seeds),
                 ("clean mAP / R1", f"{run['clean_mAP']} / {run['clean_R1']}"),
                 ("worst-case mAP / R1", f"{run.get('worst_case_mAP', '')} / {run.get('worst_case_R1', '')}"),
                 ("attacked with", run.get("attacked_with", "")), ("checkpoint", run.get("checkpoint", "")),
                 ("train commit", run.get("train_commit", "")), ("eval commit", run.get("git_commit", "")),
                 ("device", run.get("device", "")), ("torch", run.get("torch_version", "")),
                 ("date", run.get("date", "")), ("command", run.get("command", "")), ("run folder", run_id)]
        return self.render(out, f"runs/{run_id}/index.html", "run.html.j2", prefix="../../",
                           title=f"{run['defense']} · {run['backbone']} · seed {run['seed']} on {dataset}",
                           facts=facts, flags=flags, eps=run.get("eps", ""), columns=ATTACK_COLUMNS, rows=rows,
                           curve_columns=curve_columns, curve_rows=curve_rows, figures=figures)

    def eps_curves(self, board: pd.DataFrame | None, run: pd.Series) -> tuple[list[Column], list[Row]]:
        """mAP per attack and measured ε for the run's defense, backbone, seed and settings."""
        if board is None:
            return [], []
        same = board
        for key in (*GROUP, "seed", "checkpoint"):  # one model: a curve never mixes checkpoints
            if key in board:
                same = same[same[key] == run.get(key, "")]
        same = same[~same["attack"].isin(["clean", WORST_CASE])]
        eps_values = sorted(same["eps"].unique(), key=eps_units)
        if len(eps_values) < 2:
            return [], []
        columns = [Column("attack", "attack", text=True)] + [Column(e, f"ε {e}") for e in eps_values]
        rows = []
        for attack, rows_of in same.groupby("attack"):
            latest = rows_of.sort_values("date").groupby("eps").last()
            if len(latest) < 2:
                continue
            cells = [_cell(columns[0], attack)]
            cells += [_cell(c, latest["mAP"].get(c.key)) for c in columns[1:]]
            rows.append(Row(str(attack), cells))
        return (columns, rows) if rows else ([], [])

    def throughput_page(self, out: Path) -> Path:
        """Measured rates with their units."""
        frame = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in self.throughput])
        rows = []
        for _, r in frame.iterrows():
            values = {**dict(r), "rate": r.get("images_per_second"), "unit": THROUGHPUT_UNITS.get(r["kind"], "per s")}
            rows.append(Row(f"{r['kind']}/{r['name']}", [_cell(c, values.get(c.key)) for c in THROUGHPUT_COLUMNS]))
        figures = []
        for png in sorted((self.boards / "figures").glob("throughput-*.png")):
            target = self.copy_figure(png, out, f"figures/{png.name}")
            figures.append({"src": target, "caption": png.stem})
        return self.render(out, "throughput.html", "throughput.html.j2", title="Throughput",
                           columns=THROUGHPUT_COLUMNS, rows=rows, figures=figures)


#: a file every built site holds: proof that a folder is a site this command wrote (and may replace)
SITE_MARKER = ".rrb-site"


def check_site_folder(out: Path, protected: tuple[Path, ...]) -> None:
    """Refuse, before any work, an --out that is not ours to replace: a file, a folder of someone else's files,
    the current folder, or a folder holding (or inside) the boards or run folders the site is built from."""
    target = out.resolve()
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"site --out {out}: it is a file; choose a folder (e.g. --out leaderboards/site)")
    if target == Path.cwd().resolve():
        raise BenchmarkError("site --out .: the site replaces its folder whole; choose a folder of its own, e.g. "
                             "--out leaderboards/site")
    for source in protected:
        src = source.resolve()
        if target == src or src.is_relative_to(target):
            raise BenchmarkError(f"site --out {out} holds {source}, which the site is built from; choose a folder "
                                 "of its own, e.g. --out leaderboards/site")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise BenchmarkError(f"site --out {out} holds files this command did not write (no {SITE_MARKER} marker); "
                             "choose an empty or new folder")


def build_site(leaderboard_dir: str | Path = "leaderboards", results_dir: str | Path = "results",
               out: str | Path = "leaderboards/site") -> list[Path]:
    """Render the site into `out`; returns the page paths.

    It is built in a temporary folder beside `out` and swapped in only when complete; an existing
    `out` is replaced only when it is a site this command wrote (its marker file), never deleted
    otherwise.
    """
    out = Path(out)
    check_site_folder(out, (Path(leaderboard_dir), Path(results_dir)))
    check_boards(Path(leaderboard_dir))
    builder = SiteBuilder(Path(leaderboard_dir), Path(results_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out.parent)  # builds killed before they finished
    tmp = out.parent / f"{TMP_PREFIX}{os.getpid()}-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        pages = [Path(p).relative_to(tmp) for p in builder.build(tmp)]
        atomic_write_text(tmp / SITE_MARKER, "built by `python -m benchmark site`; the folder is replaced whole\n")
        check_site_folder(out, (Path(leaderboard_dir), Path(results_dir)))  # nothing moved in meanwhile
        remove_folder(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / p for p in pages]
