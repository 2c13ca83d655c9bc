"""The protocol's standard settings, written once: official boards take only runs made with them."""

from __future__ import annotations

from benchmark.core.enums import Seen

#: the standard ε in units of 1/255, in [0, 1] units, and as boards label it
STANDARD_EPS_UNITS = 8.0
STANDARD_EPS = STANDARD_EPS_UNITS / 255
STANDARD_EPS_LABEL = "8/255"
#: input (height, width) of the CPU-scale protocol (the paper scale is 256 x 128)
STANDARD_INPUT = (128, 64)
#: retrieval distance, and the ones a run may choose
STANDARD_METRIC = "euclidean"
METRICS = ("euclidean", "cosine")
#: the single attacks the paper reports, as the headline tables show them
HEADLINE_ATTACKS = ("fna", "sma", "ifgsm")
#: the `attack` value of a per-query worst case over every attack of a run
WORST_CASE = Seen.WORST_CASE.value
#: the suite whose per-query worst case tables, pages and figures show when a model has rows of several
#: (the summary board keeps one row per model and suite while a new suite version is introduced); also what
#: `--attack standard` and `--attack all` run (`attacks.suites.DEFAULT_SUITE`)
HEADLINE_SUITE = "standard-v3"
