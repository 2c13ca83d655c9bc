"""Every `python -m benchmark` example in the README and docs parses with today's command line, and every
command they use is run by the clean-clone test (so no documented command can change the repository)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from benchmark.cli.arguments import build_parser
from tests.test_clean_tree import clean_clone_commands

REPO = Path(__file__).resolve().parents[1]
#: every page a reader is sent to (README, docs/, the boards' README)
PAGES = [REPO / "README.md", *sorted(REPO.glob("docs/*.md")), REPO / "leaderboards" / "README.md"]
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`(python3? -m benchmark [^`]*)`")
_PROGRAM = re.compile(r"python3? -m benchmark(?=\s|$)")


def _commands(text: str) -> list[str]:
    """The benchmark command lines in a shell snippet: after the program name, `&&`-split, comments dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in _PROGRAM.split(line)[1:]:
            out.append(part.split(" #")[0].split("&&")[0].strip())
    return out


def examples() -> list[tuple[str, list[str]]]:
    """(page:line, argv) of every `python -m benchmark ...` example on the pages, in code blocks and inline."""
    found = []
    for page in PAGES:
        text = page.read_text()
        spans = [(m.start(), m.group(1)) for m in _FENCE.finditer(text)]
        prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        spans += [(m.start(), m.group(1).replace("\n", " ")) for m in _INLINE.finditer(prose)]
        for start, snippet in spans:
            for command in _commands(snippet):
                argv = shlex.split(re.sub(r"\[[^]]*\]", "", command))  # `[--out DIR]`: optional, left out
                if argv and argv[-1] != "--help":
                    found.append((f"{page.relative_to(REPO)}:{text.count(chr(10), 0, start) + 1}", argv))
    return found


EXAMPLES = examples()


def test_the_pages_have_examples():
    assert len(EXAMPLES) >= 40
    assert {argv[0] for _, argv in EXAMPLES} >= {"run", "eval", "sweep", "publish", "site", "plots", "table"}


@pytest.mark.parametrize("where, argv", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_documented_command_parses(where, argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # --version prints and exits 0
        if exc.code != 0:
            pytest.fail(f"{where}: `python -m benchmark {shlex.join(argv)}` no longer parses (exit {exc.code})")


def test_every_documented_command_is_run_in_a_clean_clone():
    documented = {argv[0] for _, argv in EXAMPLES if not argv[0].startswith("-")}
    run = {argv[0] for argv in clean_clone_commands(Path("/home")) if not argv[0].startswith("-")}
    assert documented - {"publish"} <= run, f"documented commands the clean-clone test never runs: {documented - run}"

