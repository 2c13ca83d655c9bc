"""The static site: built from the committed boards, loaded in headless Chromium (Debian's package)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from attacks.suites import PUBLISHED_SUITES
from benchmark.report.boards import on_recipe_test_set
from benchmark.report.site import build_site

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site of the committed records, with the figures of the run the browser tests open drawn (as `plots`
    draws them: run figures are not committed)."""
    from benchmark.report.plots import replot_run

    base = tmp_path_factory.mktemp("site")
    results = base / "results"
    shutil.copytree(REPO / "results", results)
    out = base / "site"
    build_site(REPO / "leaderboards", results, out)
    top = re.search(r'<tbody>.*?<a href="runs/([^/"]+)/index.html"', (out / "synthped.html").read_text(), re.S)
    replot_run(results / top.group(1))
    build_site(REPO / "leaderboards", results, out)
    return out


def test_site_has_a_page_per_board_and_run(site):
    summary = pd.read_csv(REPO / "leaderboards" / "summary-synthped.csv", dtype=str)
    assert (site / "index.html").is_file() and (site / "synthped.html").is_file()
    shown = summary[on_recipe_test_set(summary)]  # every suite's run on its recipe's test set has a page
    assert shown["suite"].nunique() > 1 and len(shown) < len(summary)
    for run_id in shown["run_id"]:
        assert (site / "runs" / run_id / "index.html").is_file(), run_id
    for run_id in summary[~on_recipe_test_set(summary)]["run_id"]:  # rows on another test set are not shown
        assert not (site / "runs" / run_id).exists(), run_id
    html = (site / "synthped.html").read_text()
    assert html.count('<tr data-row="') == shown["defense"].nunique()
    assert "http://" not in html and "https://" not in html


def test_site_is_rebuilt_whole(tmp_path):
    out = tmp_path / "site"
    build_site(REPO / "leaderboards", REPO / "results", out)
    (out / "stale.html").write_text("old")
    build_site(REPO / "leaderboards", REPO / "results", out)
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert not list(tmp_path.glob("*.new*"))


def test_site_refuses_a_folder_without_boards(tmp_path):
    from benchmark.core.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="no summary"):
        build_site(tmp_path, tmp_path, tmp_path / "site")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver); .ci/run does")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e .[test]"
                                    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _column(driver, key: str) -> list[str]:
    index = [th.get_attribute("data-key") for th in driver.find_elements("css selector", "#board thead th")].index(key)
    return [row.find_elements("css selector", "td")[index].get_attribute("data-value")
            for row in driver.find_elements("css selector", "#board tbody tr")]


def _assert_local(urls: list[str], site: Path) -> None:
    assert urls, "the browser logged no request"
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme in ("data", "about"):
            continue
        assert parsed.scheme == "file", f"request leaves the page's folder: {url}"
        assert Path(unquote(parsed.path)).resolve().is_relative_to(site.resolve()), f"request outside the site: {url}"


def test_board_sorts_and_stays_local_in_chromium(browser, site, tmp_path):
    summary = pd.read_csv(REPO / "leaderboards" / "summary-synthped.csv", dtype=str)
    browser.get_log("performance")  # drop what earlier pages logged
    browser.get((site / "synthped.html").as_uri())
    rows = browser.find_elements("css selector", "#board tbody tr")
    variants = browser.find_elements("css selector", "#variants tbody tr")
    assert len(rows) == summary.loc[~summary["defense"].str.contains("[", regex=False), "defense"].nunique()
    assert len(rows) + len(variants) == summary["defense"].nunique()
    before = [r.get_attribute("data-row") for r in rows]
    header = browser.find_element("css selector", '#board th[data-key="clean_mAP"] button')
    header.click()
    ascending = [float(v) for v in _column(browser, "clean_mAP")]
    assert ascending == sorted(ascending)
    after = [r.get_attribute("data-row") for r in browser.find_elements("css selector", "#board tbody tr")]
    assert after != before, "sorting by clean mAP left the rows in place"
    header.click()
    assert [float(v) for v in _column(browser, "clean_mAP")] == sorted(ascending, reverse=True)
    browser.save_screenshot(str(tmp_path / "synthped-board.png"))
    assert (tmp_path / "synthped-board.png").stat().st_size > 10_000
    _assert_local(_requested_urls(browser), site)


def test_run_page_images_load_from_the_site_folder(browser, site):
    browser.get_log("performance")
    browser.get((site / "synthped.html").as_uri())
    browser.find_element("css selector", "#board tbody tr td a").click()
    images = browser.find_elements("css selector", "img")
    assert images, "a run page shows its figures"
    for img in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img), \
            f"image did not load: {img.get_attribute('src')}"
    _assert_local(_requested_urls(browser), site)


def test_a_multi_seed_row_shows_numbers_over_the_same_seeds(site):
    """Every number of a defense's row is over its seeds (from seeds-<dataset>.csv), never seed 0 beside a mean."""
    import re

    summary = pd.read_csv(REPO / "leaderboards" / "summary-synthped.csv", dtype=str)
    seeds = pd.read_csv(REPO / "leaderboards" / "seeds-synthped.csv")
    html = (site / "synthped.html").read_text()
    shown = re.search(r'<tr data-row="ddid".*?</tr>', html, re.S).group(0)
    suite = next(s for s in sorted(PUBLISHED_SUITES, reverse=True) if s in shown)  # the one the row names
    multi = seeds[(seeds["n"] > 1) & (seeds["settings"].isna()) & (seeds["suite"] == suite)].iloc[0]
    row = re.search(rf'<tr data-row="{re.escape(multi["defense"])}".*?</tr>', html, re.S).group(0)
    assert f"{multi['clean_mAP_mean']:.2f}" in row and f"{multi['worst_case_mAP_mean']:.2f}" in row
    assert f"{multi['worst_case_mAP_sd']:.2f}" in row
    first = summary[(summary["defense"] == multi["defense"]) & (summary["settings"].isna())
                    & (summary["suite"] == suite)]
    seed0_clean = float(first.sort_values("seed").iloc[0]["clean_mAP"])
    if round(seed0_clean, 2) != round(multi["clean_mAP_mean"], 2):
        assert f"{seed0_clean:.2f}" not in row


def test_site_never_deletes_a_folder_it_did_not_build(tmp_path, capsys):
    """--out pointed at someone's files, at the boards, or at '.' is refused in one line, nothing removed."""
    from benchmark.cli.main import main

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\\\documentclass{article}")
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site", "figures"))
    before = sorted(p.name for p in boards.iterdir())
    for out in (mine, boards, tmp_path / "boards" / ".."):
        assert main(["site", "--leaderboard-dir", str(boards), "--results-dir", str(REPO / "results"),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "choose" in err
    assert (mine / "thesis.tex").is_file() and sorted(p.name for p in boards.iterdir()) == before
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert main(["site", "--leaderboard-dir", str(boards), "--out", "."]) == 2
    finally:
        os.chdir(cwd)
    assert "choose a folder of its own" in capsys.readouterr().err


def test_a_stale_build_is_never_published(tmp_path):
    out = tmp_path / "site"
    (tmp_path / "site.new").mkdir()
    (tmp_path / "site.new" / "index.html").write_text("stale")
    (tmp_path / ".tmp-999999-site").mkdir()  # a build whose process died
    build_site(REPO / "leaderboards", REPO / "results", out)
    assert (out / "index.html").read_text() != "stale" and (out / ".rrb-site").is_file()
    assert not (tmp_path / ".tmp-999999-site").exists()


def test_hostile_board_text_renders_as_text_and_writes_nowhere_else(tmp_path):
    """<script>, ../ and {{ }} in every text column of a board: escaped on every page, no file outside --out."""
    boards, results = tmp_path / "boards", tmp_path / "results"
    boards.mkdir()
    hostile = '<script>alert(1)</script>{{ 7*7 }}'
    summary = pd.read_csv(REPO / "leaderboards" / "summary-synthped.csv", dtype=str, keep_default_na=False)
    board = pd.read_csv(REPO / "leaderboards" / "synthped.csv", dtype=str, keep_default_na=False)
    first = summary[on_recipe_test_set(summary)].iloc[:1].copy()  # a row the site shows
    rows = board[board["run_id"] == first["run_id"].iloc[0]].copy()
    for frame in (first, rows):
        for column in ("defense", "backbone", "settings", "flags", "command", "suite"):
            if column in frame:
                frame[column] = hostile
        frame["run_id"] = "../../../escaped"
    first.to_csv(boards / "summary-synthped.csv", index=False)
    rows.to_csv(boards / "synthped.csv", index=False)
    results.mkdir()
    out = tmp_path / "nest" / "site"
    build_site(boards, results, out)
    assert not (tmp_path / "escaped").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(boards)
               and not p.is_relative_to(out)]
    assert written == [], written
    for page in out.rglob("*.html"):
        html = page.read_text()
        assert "<script>alert" not in html, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }}" in (out / "synthped.html").read_text()


def test_a_recorded_interval_is_shown_beside_its_number(tmp_path):
    import dataclasses

    from benchmark.report.boards import write_leaderboards
    from tests.test_leaderboard import clean_row, make_row

    clean = dataclasses.replace(clean_row("ddid"), suite="standard-v1", mAP_low=55.0, mAP_high=65.0)
    suite = dataclasses.replace(make_row("ddid", "standard-v1", "worst-case", 10.0), suite="standard-v1",
                                mAP_low=8.0, mAP_high=12.5)
    write_leaderboards([clean, suite], tmp_path / "boards")
    out = tmp_path / "site"
    build_site(tmp_path / "boards", tmp_path / "results", out)
    board = re.search(r'<tr data-row="ddid".*?</tr>', (out / "toy.html").read_text(), re.S).group(0)
    assert "8.00\u201312.50" in board
    run_page = next((out / "runs").glob("*/index.html")).read_text()
    assert "55.00\u201365.00" in run_page and "8.00\u201312.50" in run_page


def test_standard_recipes_and_ablation_variants_are_ranked_apart_each_in_its_own_suite(tmp_path):
    """A variant measured with v1 only must neither pull the standard recipes back to v1 nor outrank their v2."""
    import dataclasses

    from benchmark.report.boards import write_leaderboards
    from tests.test_leaderboard import clean_row, make_row

    def run(defense, suite, worst):
        rows = [clean_row(defense), make_row(defense, suite, "worst-case", worst)]
        return [dataclasses.replace(r, suite=suite, run_id=f"{defense}-{suite}", checkpoint=defense) for r in rows]

    for rows in (run("ddid", "standard-v1", 10.0), run("ddid", "standard-v2", 7.0),
                 run("ddid[ablate=fnes]", "standard-v1", 9.0)):
        write_leaderboards(rows, tmp_path / "boards")
    out = tmp_path / "site"
    build_site(tmp_path / "boards", tmp_path / "results", out)
    page = (out / "toy.html").read_text()
    main = re.search(r'<table class="sortable" id="board">.*?</table>', page, re.S).group(0)
    variants = re.search(r'<table class="sortable" id="variants">.*?</table>', page, re.S).group(0)
    assert "standard-v2" in main and "7.00" in main and "standard-v1" not in main and "fnes" not in main
    assert "ddid[ablate=fnes]" in variants and "9.00" in variants
    assert "per-query worst case of standard-v2 on every row" in page
