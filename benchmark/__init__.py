"""reid-robustness-bench: adversarial robustness benchmark for person re-identification."""

__version__ = "0.1.0"
