"""The undefended baseline."""

from defenses.base import Defense, register_defense


@register_defense("none", kind="baseline", paper="BoT (Luo et al. CVPRW 2019) recipe without tricks")
class NoDefense(Defense):
    """Undefended: ID cross-entropy with label smoothing + batch-hard triplet, PK sampling."""
