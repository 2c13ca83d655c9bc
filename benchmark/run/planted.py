"""An attack unit test for retrieval: plant an adversarial example that provably exists, and require the suite
to find it (after Zimmermann et al., NeurIPS 2022, "Increasing confidence in adversarial robustness evaluations").

`PlantedModel` takes the place of a defense's ReID model, behind the defense's own test-time transform and
adaptive forwards: a hidden linear probe reads a checkerboard over the top half of what the model sees (the
transform's output) and, as its response crosses a threshold, moves the embedding onto a wrong identity (the
centroid of the gallery's distractors). The plant is designed for the transform (`design_plant`): of a few
checkerboard cell sizes it takes the one whose response on planted images, seen through the transform, stays
furthest above its response on every clean image, and it sets the probe's threshold in that gap. So clean images
score as before (the probe moves none by more than `CLEAN_GATE` of the way), and each query plus `AMPLITUDE` ε
times the checkerboard, inside the ε-ball, drives its embedding onto the wrong identity. The ReID model sits
behind a wide blur (`Blurred`) and does not see the probe's region, so that the plant is the only large damage
within ε, no attack reaches it by accident, and in that region the probe's gradient is the only one. An attack
that reaches `SHARE` of the planted damage on every
query it damages has found what exists; one whose gradients through the transform are masked does not.

What the probe cannot see is masking inside the ReID network itself (the plant is read before it); the
`input-gradients` rule of `validate` covers the network's own gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import nn

from attacks.suites import DEFAULT_SUITE
from benchmark.core.metrics import evaluate_features, query_scores
from benchmark.core.protocol import STANDARD_EPS
from benchmark.models.external import content_hash
from benchmark.run.checkpoints import deploy, embed
from benchmark.run.execute import attack_model
from benchmark.run.outcome import TrainInfo
from benchmark.run.spec import external_model_spec, make_spec
from benchmark.run.workspace import Workspace, subset_queries
from defenses import Defense

SHARE = 0.95            # of the planted damage an attack must reach on a query
AP_TOLERANCE = 0.01     # or it comes this close to the planted AP (1 point: standard-v2's per-query floor)
FOUND = f"{SHARE:.0%} of its damage or within 1 AP point of it, or the probe fired"  # what found means
CELLS = (1, 2, 4)       # checkerboard cell sizes tried, in pixels: transforms keep different frequencies
GATE_LOGIT = 7.0        # the probe's logit at the clean images' highest and the planted images' lowest response
MIN_GAP = 0.05          # of eps: a smaller gap between the two responses cannot be gated without touching clean scores
BLUR = 9                # the blur's window in front of the ReID model
CLEAN_GATE = 1e-3       # the most the probe may move a clean image's embedding onto the target (a share of the way)
AMPLITUDE = 1.0         # of eps: the plant's amplitude (the full ball: the suite needs no slack to find it)
MAX_QUERIES = 8         # damaged queries the suite runs on (CI's budget: the suite's cost grows with them)


def checkerboard(height: int, width: int, cell: int = 1) -> torch.Tensor:
    """1 x 3 x H x W: +-1 in cell x cell squares over the top half of the image, 0 elsewhere."""
    pattern = torch.zeros(1, 3, height, width)
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width), indexing="ij")
    pattern[0, :, : height // 2] = ((rows // cell + cols // cell) % 2 * 2 - 1).float()
    return pattern


def planted_images(images: torch.Tensor, eps: float, pattern: torch.Tensor) -> torch.Tensor:
    """The planted adversarial examples: each image plus eps times the pattern, clipped to [0, 1]."""
    return (images + eps * pattern.to(images.device)).clamp(0, 1)


def response(seen: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """The probe's reading of each image: its mean product with the pattern over the pattern's support."""
    return (seen * pattern).sum(dim=(1, 2, 3)) / pattern.abs().sum()


@dataclasses.dataclass(frozen=True)
class Plant:
    """A checkerboard and the probe's gate, sigmoid(scale * (response - threshold)), for one transform."""

    pattern: torch.Tensor
    cell: int
    threshold: float
    scale: float
    #: the planted images' lowest response minus the clean images' highest, in units of eps
    gap: float


def design_plant(seen: Callable[[torch.Tensor], torch.Tensor], clean: torch.Tensor, queries: torch.Tensor,
                 eps: float) -> Plant | None:
    """The plant of amplitude `eps` that survives `seen` (the transform) best, or None when none separates planted
    images from clean ones. `clean` are every image the model will see (queries and gallery), `queries` the ones
    planted.
    """
    best: Plant | None = None
    height, width = queries.shape[2:]
    with torch.no_grad():
        for cell in CELLS:
            pattern = checkerboard(height, width, cell).to(queries.device)
            top_clean = float(response(seen(clean), pattern).max())
            low_planted = float(response(seen(planted_images(queries, eps, pattern)), pattern).min())
            gap = low_planted - top_clean
            if best is None or gap / eps > best.gap:
                best = Plant(pattern, cell, top_clean + gap / 2, 2 * GATE_LOGIT / max(gap, 1e-12), gap / eps)
    return best if best is not None and best.gap >= MIN_GAP else None


class Blurred(nn.Module):
    """A ReID model behind a wide box blur: little that an ε-bounded perturbation does survives it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @staticmethod
    def blur(x: torch.Tensor) -> torch.Tensor:
        """The box blur (BLUR x BLUR, borders averaged over the image only)."""
        return nn.functional.avg_pool2d(x, BLUR, stride=1, padding=BLUR // 2, count_include_pad=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's test-time embedding of the blurred images."""
        return self.net.embed(self.blur(x))

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The model's attack embedding of the blurred images."""
        return self.net.attack_embed(self.blur(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class PlantedModel(nn.Module):
    """`net`'s embedding, moved onto `target` as the plant's probe reads its pattern in the input.

    It takes the place of a defense's ReID model, so the defense's transform and adaptive forwards
    run in front of it exactly as they run in front of the model.
    """

    def __init__(self, net: nn.Module, target: torch.Tensor | None, plant: Plant) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("pattern", plant.pattern.detach().clone())
        self.register_buffer("support", (plant.pattern != 0).to(plant.pattern.dtype))
        #: None: the same model without the plant (the clean reference)
        self.register_buffer("target", None if target is None else target.detach().clone())
        self.threshold, self.scale = plant.threshold, plant.scale

    def gate(self, seen: torch.Tensor) -> torch.Tensor:
        """How far each image's embedding is moved onto the target, in [0, 1]."""
        return torch.sigmoid(self.scale * (response(seen, self.pattern) - self.threshold)).unsqueeze(1)

    def hide(self, seen: torch.Tensor) -> torch.Tensor:
        """The images with the probe's region grey: the model's gradient there would drown the probe's."""
        return seen + self.support * (0.5 - seen)

    def _moved(self, seen: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return emb
        return emb + self.gate(seen).to(emb.dtype) * (self.target.to(emb.dtype) - emb)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The planted test-time embedding of images in [0, 1]."""
        return self._moved(x, self.net.embed(self.hide(x)))

    def attack_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The planted embedding white-box attacks differentiate."""
        return self._moved(x, self.net.attack_embed(self.hide(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


@dataclasses.dataclass
class PlantedReport:
    """Per scored query: the planted solution's AP drop, the share of it each attack reached, and how far the
    probe fired on each attack's images (the planted perturbation itself found: on a model whose AP barely moves,
    the share of a few AP points is noisy where the embedding already sits on the target)."""

    clean_ap: torch.Tensor
    planted_ap: torch.Tensor
    reached: dict[str, torch.Tensor]
    fired: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def tested(self) -> torch.Tensor:
        """Queries the planted solution damages (by more than 1 AP point): the ones an attack must find."""
        return ~torch.isnan(self.clean_ap) & (self.clean_ap - self.planted_ap > 0.01)

    def found_queries(self, attack: str) -> torch.Tensor:
        """Per tested query: `attack` reached SHARE of the planted damage (or came within AP_TOLERANCE of the planted
        AP, the resolution at which standard-v2 stops a query), or fired the probe to SHARE."""
        damage = (self.clean_ap - self.planted_ap).clamp_min(0.0)
        hit = (self.reached[attack] >= SHARE) | ((1 - self.reached[attack]) * damage <= AP_TOLERANCE)
        if attack in self.fired:
            hit = hit | (self.fired[attack] >= SHARE)
        return hit[self.tested]

    def found(self, attack: str) -> float:
        """Fraction of tested queries on which `attack` found the planted example (`found_queries`)."""
        return float(self.found_queries(attack).float().mean())


def planted_report(clean_ap: torch.Tensor, planted_ap: torch.Tensor, attacked: dict[str, torch.Tensor],
                   fired: dict[str, torch.Tensor] | None = None) -> PlantedReport:
    """Compare each attack's per-query AP (fractions) with the planted solution's; `fired`: the probe's gate on
    each attack's images."""
    damage = (clean_ap - planted_ap).clamp_min(1e-9)
    reached = {name: ((clean_ap - ap) / damage).nan_to_num(0.0) for name, ap in attacked.items()}
    return PlantedReport(clean_ap, planted_ap, reached, dict(fired or {}))


@dataclasses.dataclass
class PlantedCheck:
    """The planted-example check of one defense: the plant, the clean scores with and without it, the suite's
    reach per damaged query, and what each suite member improved."""

    suite: str
    plant: Plant | None
    clean_mAP: float
    #: the probe's largest gate on a clean query or gallery image (0: clean scores untouched)
    clean_gate: float
    report: PlantedReport | None = None
    members: list[dict] = dataclasses.field(default_factory=list)
    worst_case_mAP: float = float("nan")

    @property
    def damaged(self) -> int:
        """Queries the planted solution damages."""
        return int(self.report.tested.sum()) if self.report is not None else 0

    @property
    def found(self) -> int:
        """Damaged queries on which the suite reached SHARE of the planted damage."""
        if self.report is None:
            return 0
        return int(self.report.found_queries(self.suite).sum())

    @property
    def problem(self) -> str | None:
        """Why the check fails, or None when it passes."""
        if self.plant is None:
            return (f"no checkerboard (cells {', '.join(map(str, CELLS))} px) survives the defense's transform "
                    "apart from clean images: the benchmark cannot show its attacks find what exists behind it")
        if not self.clean_gate <= CLEAN_GATE:
            return f"the probe moves clean embeddings {self.clean_gate:.1e} of the way to the target (> {CLEAN_GATE:g})"
        if self.damaged == 0:
            return "the planted example damages no query through the defense"
        if self.found < self.damaged:
            return (f"{self.suite} found the planted example ({FOUND}) on "
                    f"{self.found} of {self.damaged} damaged queries: its gradients through the defense do not lead to "
                    "an adversarial example that exists (masked or misdeclared adaptive forward?)")
        return None

    def detail(self) -> str:
        """One line of evidence for the report."""
        if self.problem is not None:
            return self.problem
        improved = ", ".join(f"{m['member']} {m['improved']}/{m['attacked']}" for m in self.members if m["attacked"])
        return (f"{self.suite} found the planted example ({FOUND}) on "
                f"{self.found} of {self.damaged} damaged queries (checkerboard cell {self.plant.cell} px, gap "
                f"{self.plant.gap:.2f} eps; worst case "
                f"{self.worst_case_mAP:.2f}; improved/attacked: {improved})")


def planted_check(defense: Defense, model: nn.Module, ws: Workspace, dataset_options: Mapping[str, str],
                  device: torch.device, suite: str = DEFAULT_SUITE, eps_units: float = STANDARD_EPS * 255
                  ) -> PlantedCheck:
    """Plant an adversarial example behind `defense` on `model` and run `suite` against it on `ws`'s queries.

    `dataset_options` are the synthped options `ws` was built with (they name the run's data).
    """
    eps = eps_units / 255
    height, width = ws.size
    spec = make_spec(dataset_options=dataset_options, height=height, width=width)
    transform = defense.transform()
    seen = transform.to(device) if transform is not None else nn.Identity()
    queries = ws.query.float_images().to(device)
    everyone = torch.cat([queries, ws.gallery.float_images().to(device)])
    plant = design_plant(seen, everyone, queries, AMPLITUDE * eps)
    if plant is None:
        return PlantedCheck(suite, None, float("nan"), float("nan"))
    reference = deploy(defense, PlantedModel(Blurred(model), None, plant).to(device))
    qf, gf = embed(reference, ws.query.images, spec, device), embed(reference, ws.gallery.images, spec, device)
    clean = evaluate_features(qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids).mAP
    planted = PlantedModel(Blurred(model), gf[ws.gallery.pids == 0].mean(0), plant).to(device).eval()
    deployed = deploy(defense, planted)
    planted_qf = embed(deployed, planted_images(queries, AMPLITUDE * eps, plant.pattern), spec, device)
    with torch.no_grad():
        clean_gate = float(planted.gate(seen(everyone)).max())
    clean_ap, _ = query_scores(embed(deployed, ws.query.images, spec, device), gf, ws.query.pids, ws.gallery.pids,
                               ws.query.camids, ws.gallery.camids)
    planted_ap, _ = query_scores(planted_qf, gf, ws.query.pids, ws.gallery.pids, ws.query.camids, ws.gallery.camids)
    # only the queries the plant damages can show anything: the suite runs on them (at most MAX_QUERIES)
    damaged = planted_report(clean_ap, planted_ap, {}).tested.nonzero().flatten()[:MAX_QUERIES]
    if not len(damaged):
        return PlantedCheck(suite, plant, clean, clean_gate)
    sub = subset_queries(ws, damaged)
    spec = make_spec(attacks=suite, dataset_options=dataset_options, height=height, width=width, eps=f"{eps_units:g}",
                     external=external_model_spec(planted, "module:benchmark.run.planted", "planted"))
    info = TrainInfo("planted", f"planted-{content_hash(planted)[:16]}", cached=True, train_seconds=0.0)
    target = clean_ap[damaged] - SHARE * (clean_ap[damaged] - planted_ap[damaged])
    outcome = attack_model(spec, defense, defense.config(), planted, info, sub, device, stop_at=target)
    (worst,) = [r for r in outcome.aggregates if r.attack == spec.suite]
    with torch.no_grad():
        fired = planted.gate(seen(worst.adversarial.to(device))).flatten()
    report = planted_report(outcome.clean.per_query_ap, planted_ap[damaged], {worst.attack: worst.metrics.per_query_ap},
                            {worst.attack: fired})
    return PlantedCheck(worst.attack, plant, clean, clean_gate, report, worst.report["members"], worst.metrics.mAP)
