"""reid-robustness-bench: adversarial robustness of person re-identification models and defenses.

`benchmark.evaluate(model, ...)` scores any embedding model (see `benchmark.api`); the command
line is `python -m benchmark`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Evaluation", "evaluate"]


def __getattr__(name: str) -> Any:
    # imported on first use: `import benchmark.core...` must not pull in the whole run stack
    if name in __all__:
        from benchmark import api

        return getattr(api, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
