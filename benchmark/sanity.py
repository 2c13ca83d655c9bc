"""AutoAttack-style sanity flags: signs that a robustness number may come from gradient masking.

Flags are short machine-readable strings; each comes with a sentence for people. They are
printed, stored in the run folder and in every leaderboard row of the run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from attacks import ATTACKS, AttackContext, build_attack
from benchmark.enums import Knowledge
from benchmark.harness import AttackResult, RunOutcome, eps_label
from benchmark.metrics import evaluate_features
from benchmark.models import extract_embeddings

WHITE_BOX_PROBE = "sma"        # the iteration check reruns this attack with fewer steps
FEW_STEPS = 4
TOLERANCE_MAP = 1.0            # percentage points of mAP treated as noise


@dataclass(frozen=True)
class Flag:
    """A sanity flag: a machine-readable code and a sentence."""
    code: str
    message: str


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
    """A transfer or score-based attack beating every white-box attack hints at masked gradients."""
    flags = []
    for eps in sorted({r.eps for r in results}):
        at_eps = [r for r in results if r.eps == eps]
        white = [r.metrics.mAP for r in at_eps if ATTACKS.meta(r.attack)["knowledge"] == Knowledge.WHITE_BOX.value]
        if not white:
            continue
        for r in at_eps:
            if ATTACKS.meta(r.attack)["knowledge"] != Knowledge.WHITE_BOX.value and \
                    r.metrics.mAP < min(white) - TOLERANCE_MAP:
                flags.append(Flag(f"blackbox-stronger:{r.attack}",
                                  f"{r.attack} (black-box) reaches mAP {r.metrics.mAP:.2f} < best white-box "
                                  f"{min(white):.2f} at {eps_label(eps)}"))
    return flags


def more_iterations_weaker(outcome: RunOutcome, eps: float = 8 / 255) -> list[Flag]:
    """Rerun the probe attack with few steps: the full-step run must not be weaker."""
    full = [r for r in outcome.attacks if r.attack == WHITE_BOX_PROBE and abs(r.eps - eps) < 1e-9]
    if not full:
        return []
    ws, model = outcome.workspace, outcome.model
    ctx = AttackContext(query_pids=ws.query.pids, query_feats=outcome.query_feats, seed=outcome.spec.seed)
    defaults = ATTACKS.get(WHITE_BOX_PROBE).Options()
    attack = build_attack(WHITE_BOX_PROBE, model, eps=eps, steps=FEW_STEPS,
                          step=defaults.step * eps / defaults.eps * defaults.steps / FEW_STEPS)
    adv = attack.run(ws.query.images, ctx)
    device = next(model.parameters()).device
    few = evaluate_features(extract_embeddings(model, adv, device=device), outcome.gallery_feats, ws.query.pids,
                            ws.gallery.pids, ws.query.camids, ws.gallery.camids, outcome.spec.metric)
    if full[0].metrics.mAP > few.mAP + TOLERANCE_MAP:
        return [Flag("more-iters-weaker", f"{WHITE_BOX_PROBE}: {defaults.steps} steps give mAP "
                     f"{full[0].metrics.mAP:.2f} > {FEW_STEPS} steps {few.mAP:.2f}")]
    return []


def zero_gradients(outcome: RunOutcome, n: int = 16) -> list[Flag]:
    """Input gradients of the embedding distance should not vanish."""
    model = outcome.model
    device = next(model.parameters()).device
    x = outcome.workspace.query.float_images(slice(0, n)).to(device)
    noise = torch.empty_like(x).uniform_(-1 / 255, 1 / 255, generator=None)
    x_adv = (x + noise).clamp(0, 1).requires_grad_(True)
    with torch.no_grad():
        clean = model.embed(x)
    (grad,) = torch.autograd.grad((model.embed(x_adv) - clean).pow(2).sum(), x_adv)
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    if zero:
        return [Flag("zero-grad", f"{zero}/{len(x)} queries have an all-zero input gradient")]
    return []


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
            + more_iterations_weaker(outcome) + zero_gradients(outcome) + nondeterminism(outcome))


def format_flags(flags: list[Flag]) -> str:
    """The flags as printed lines."""
    return "\n".join(f"FLAG {f.code}: {f.message}" for f in flags) or "no sanity flags raised"
