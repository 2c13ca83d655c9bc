"""AutoAttack-style sanity flags: signs that a robustness number may come from gradient masking.

Flags are short machine-readable strings; each comes with a sentence for people. They are
printed, stored in the run folder and in every leaderboard row of the run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from attacks import ATTACKS, Attack, build_attack
from benchmark.core.enums import Knowledge
from benchmark.core.metrics import evaluate_features
from benchmark.core.protocol import STANDARD_EPS
from benchmark.models import extract_embeddings
from benchmark.run.cells import attack_context, run_attack
from benchmark.run.checkpoints import embed
from benchmark.run.outcome import AttackResult, RunOutcome, eps_label

WHITE_BOX_PROBE = "sma"        # the iteration check reruns this attack with fewer steps
FEW_STEPS = 4
TOLERANCE_MAP = 1.0            # percentage points of mAP treated as noise
UNCHANGED = 0.5 / 255          # an output within half a grey level of its input counts as unchanged


#: every flag code and when it is raised; docs/protocol.md's glossary is generated from it
FLAG_MEANINGS: dict[str, str] = {
    "eps-rise": "robust mAP of an attack (`eps-rise:<attack>`) rises by more than 1 point when ε grows",
    "blackbox-stronger": "a transfer or score-based attack (`blackbox-stronger:<attack>`) beats, by more than 1 "
                         "point, every white-box attack of the same objective (the registry's `objective`: Square "
                         "and fgsm/sma share the self-distance, transfer and ifgsm/mifgsm the push loss)",
    "more-iters-weaker": "SMA with 16 steps leaves mAP more than 1 point above SMA with 4 steps",
    "zero-grad": "some queries have an all-zero input gradient at a white-box attack's (`zero-grad:<attack>`) own "
                 "starting point, through the adaptive forward",
    "unchanged": "an attack (`unchanged:<attack>`) left more than half of the queries within half a grey level of "
                 "the clean image",
    "attack-raises-map": "an attack (`attack-raises-map:<attack>`) leaves mAP more than 1 point above clean",
    "not-converged": "doubling the suite's APGD iterations lowers the worst-case mAP by more than 1 point",
    "nondeterministic": "two embeddings of the same images differ (a randomised defense then needs EOT)",
}


@dataclass(frozen=True)
class Flag:
    """A sanity flag: a machine-readable code (`FLAG_MEANINGS`, optionally `:<attack>`) and a sentence."""
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code.partition(":")[0] not in FLAG_MEANINGS:
            raise ValueError(f"sanity flag {self.code!r} is not in FLAG_MEANINGS; document it there")


def eps_monotonicity(results: list[AttackResult]) -> list[Flag]:
    """Robust mAP should not rise when epsilon grows."""
    by_attack: dict[str, list[AttackResult]] = defaultdict(list)
    for r in results:
        by_attack[r.attack].append(r)
    flags = []
    for attack, rs in by_attack.items():
        rs = sorted(rs, key=lambda r: r.eps)
        for small, big in zip(rs, rs[1:], strict=False):
            if big.metrics.mAP > small.metrics.mAP + TOLERANCE_MAP:
                flags.append(Flag(f"eps-rise:{attack}", f"{attack}: mAP rises from {small.metrics.mAP:.2f} at "
                                  f"{eps_label(small.eps)} to {big.metrics.mAP:.2f} at {eps_label(big.eps)}"))
                break
    return flags


def black_box_stronger(results: list[AttackResult]) -> list[Flag]:
    """A transfer or score-based attack beating the white-box attacks of the same objective hints at masked gradients.

    Compared within an objective (Square vs sma and fgsm on the self-distance, transfer vs ifgsm and
    mifgsm on the push loss): the best of *all* white-box attacks can hide a masked one.
    """
    flags = []
    for eps in sorted({r.eps for r in results}):
        at_eps = [r for r in results if r.eps == eps]
        for r in at_eps:
            meta = ATTACKS.meta(r.attack)
            if ATTACKS.get(r.attack).knowledge == Knowledge.WHITE_BOX:
                continue
            white = [w.metrics.mAP for w in at_eps if ATTACKS.get(w.attack).knowledge == Knowledge.WHITE_BOX
                     and ATTACKS.meta(w.attack).objective == meta.objective]
            if white and r.metrics.mAP < min(white) - TOLERANCE_MAP:
                flags.append(Flag(f"blackbox-stronger:{r.attack}",
                                  f"{r.attack} (black-box) reaches mAP {r.metrics.mAP:.2f} < {min(white):.2f}, the "
                                  f"best white-box attack on its objective ({meta.objective}) at "
                                  f"{eps_label(eps)}"))
    return flags


def attack_raises_map(outcome: RunOutcome) -> list[Flag]:
    """An attack must not leave retrieval better than clean."""
    return [Flag(f"attack-raises-map:{r.attack}", f"{r.attack} at {eps_label(r.eps)} leaves mAP {r.metrics.mAP:.2f} "
                 f"> clean {outcome.clean.mAP:.2f}")
            for r in outcome.attacks if r.metrics.mAP > outcome.clean.mAP + TOLERANCE_MAP]


def not_converged(outcome: RunOutcome) -> list[Flag]:
    """Doubling the suite's APGD iterations must not lower worst-case mAP by more than the tolerance."""
    flags = []
    for agg in outcome.aggregates:
        note = agg.report.get("convergence")
        if note and note["delta"] < -TOLERANCE_MAP:
            flags.append(Flag("not-converged", f"{agg.attack} at {eps_label(agg.eps)}: doubled APGD iterations lower "
                              f"worst-case mAP from {agg.metrics.mAP:.2f} to {note['mAP']:.2f}"))
    return flags


def unchanged_outputs(outcome: RunOutcome) -> list[Flag]:
    """An attack whose output equals its input on most queries did not attack (e.g. a zero gradient)."""
    clean = outcome.workspace.query.float_images()
    flags = []
    for r in outcome.attacks:
        moved = (r.adversarial - clean).abs().flatten(1).amax(1)
        still = int((moved < UNCHANGED).sum())
        if still > len(moved) / 2:
            flags.append(Flag(f"unchanged:{r.attack}", f"{r.attack} at {eps_label(r.eps)} left {still}/{len(moved)} "
                              "queries within half a grey level of the clean image"))
    return flags


def more_iterations_weaker(outcome: RunOutcome, eps: float = STANDARD_EPS) -> list[Flag]:
    """Rerun the probe attack with few steps: the full-step run must not be weaker."""
    full = [r for r in outcome.attacks if r.attack == WHITE_BOX_PROBE and abs(r.eps - eps) < 1e-9]
    if not full:
        return []
    ws, model = outcome.workspace, outcome.model
    device = next(model.parameters()).device
    defaults = ATTACKS.get(WHITE_BOX_PROBE).Options()
    options = {"eps": eps, "steps": FEW_STEPS, "step": defaults.step * eps / defaults.eps * defaults.steps / FEW_STEPS}
    # the probe is an attack cell like any other: copies of the shared tensors, and the harness's checks
    ctx = attack_context(outcome.spec, ws, outcome.query_feats, outcome.gallery_feats, device, WHITE_BOX_PROBE)
    adv, _, _ = run_attack(WHITE_BOX_PROBE, eps, outcome.views[0] if outcome.views else model, ws, ctx, outcome.spec,
                           ws.query.float_images(), options)
    few = evaluate_features(embed(model, adv, outcome.spec, device), outcome.gallery_feats, ws.query.pids,
                            ws.gallery.pids, ws.query.camids, ws.gallery.camids, outcome.spec.metric)
    if full[0].metrics.mAP > few.mAP + TOLERANCE_MAP:
        return [Flag("more-iters-weaker", f"{WHITE_BOX_PROBE}: {defaults.steps} steps give mAP "
                     f"{full[0].metrics.mAP:.2f} > {FEW_STEPS} steps {few.mAP:.2f}")]
    return []


def zero_gradients(outcome: RunOutcome, n: int = 16) -> list[Flag]:
    """Input gradients must not vanish at each white-box attack's own starting point.

    Probing from the attack's start matters: a quantising defense erases a 1e-4 symmetry-breaking
    start, so a probe with larger noise would miss the zero gradient that attack actually sees.
    """
    if not outcome.views:
        return []
    ws, view = outcome.workspace, outcome.views[0]
    device = next(view.parameters()).device
    x = ws.query.float_images(slice(0, n)).to(device)
    index = torch.arange(len(x))
    flags = []
    for name in sorted({r.attack for r in outcome.attacks}):
        cls = ATTACKS.get(name)
        if cls.knowledge != Knowledge.WHITE_BOX or cls.loss is Attack.loss:
            continue
        # copies of the shared tensors, as for every attack cell: a loss cannot alter what the run reports
        ctx = attack_context(outcome.spec, ws, outcome.query_feats, outcome.gallery_feats, device, name)
        attack = build_attack(name, view)
        start = attack.start(x, torch.Generator().manual_seed(outcome.spec.seed))
        grad = attack.gradient(start, x, ctx, index)
        zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
        if zero:
            flags.append(Flag(f"zero-grad:{name}", f"{name}: {zero}/{len(x)} queries have an all-zero input "
                              "gradient at the attack's own starting point"))
    return flags


def nondeterminism(outcome: RunOutcome, n: int = 16) -> list[Flag]:
    """Two embeddings of the same images must agree (a random defense needs EOT)."""
    model = outcome.model
    device = next(model.parameters()).device
    x = outcome.workspace.query.images[:n]
    a = extract_embeddings(model, x, device=device)
    b = extract_embeddings(model, x, device=device)
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        return [Flag("nondeterministic", f"embeddings of the same images differ by up to {diff:.2e}")]
    return []


def sanity_flags(outcome: RunOutcome) -> list[Flag]:
    """Every sanity flag raised for a run."""
    torch.manual_seed(outcome.spec.seed)
    return (eps_monotonicity(outcome.attacks) + black_box_stronger(outcome.attacks)
            + more_iterations_weaker(outcome) + zero_gradients(outcome) + unchanged_outputs(outcome)
            + attack_raises_map(outcome) + not_converged(outcome) + nondeterminism(outcome))


def format_flags(flags: list[Flag]) -> str:
    """The flags as printed lines."""
    return "\n".join(f"FLAG {f.code}: {f.message}" for f in flags) or "no sanity flags raised"
