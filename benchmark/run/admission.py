"""Admission rules a defense must pass before its numbers mean anything (`python -m benchmark validate`).

A submitter runs these on a small synthped in minutes, before spending hours on the protocol. Each
rule is a pure check on a trained subject that returns pass/fail with one line of evidence; the
report lists every rule, so a failure names the rule it broke. The rules are the conditions the
harness's numbers silently rely on: a deterministic deployed model (or a declared EOT), real input
gradients through every adaptive forward (else white-box attacks measure masking, not robustness),
training that never sees a test identity or image, attacks that cannot alter the model, a declared
inference cost, options that are all recorded (they key the checkpoint), and a standard suite that
finds an adversarial example planted behind the defense's transform (`benchmark.run.planted`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import benchmark.data.base as data_layer
from benchmark.core.errors import BenchmarkError
from benchmark.core.options import changed_options, option_paths
from benchmark.core.protocol import STANDARD_EPS as EPS
from benchmark.core.training import TrainConfig
from benchmark.models import ModelConfig, ReidModel, extract_embeddings
from benchmark.run.cells import attack_context, run_attack, scaled_options
from benchmark.run.checkpoints import attack_views, deploy, train_or_load
from benchmark.run.planted import planted_check
from benchmark.run.spec import RunSpec, make_spec
from benchmark.run.throughput import timed
from benchmark.run.workspace import Workspace, load_workspace
from defenses import DEFENSES, DefendedModel, Defense
from defenses.adaptive import AttackView, declared_forwards

#: the small synthped validation runs on (64x32, 40 identities): minutes on a 2-core CPU
SMALL_SYNTHPED = {"num_ids": "40", "max_images": "12", "distractors": "8", "junk": "4", "height": "64", "width": "32"}
#: attacks run to check that attacking leaves the model alone, with budgets cut to seconds
INTEGRITY_ATTACKS: dict[str, dict[str, Any]] = {"fna": {"steps": 4}, "apgd-ce": {"steps": 4},
                                                 "query-bb": {"queries": 20}}
ATOL = 1e-4


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one admission rule: its name, pass or fail, and one line of evidence."""

    rule: str
    passed: bool
    detail: str


@dataclass
class FitRecord:
    """What happened while the defense trained: image files read through the data layer, history."""

    paths_read: set[str] = field(default_factory=set)
    history: Any = None
    params_changed: bool = False
    seconds: float = 0.0


@dataclass
class Subject:
    """A trained defense under validation, with everything the rules look at."""

    name: str
    defense: Defense
    model: ReidModel
    deployed: DefendedModel
    ws: Workspace
    spec: RunSpec
    fit: FitRecord
    device: torch.device


@dataclass(frozen=True)
class Rule:
    """An admission rule: a name (what the report says), what it requires, and its check."""

    name: str
    requires: str
    check: Callable[[Subject], tuple[bool, str]]


@contextmanager
def record_reads() -> Iterator[set[str]]:
    """Record every image file read through the data layer (`load_image`) inside the block."""
    seen: set[str] = set()
    original = data_layer.load_image

    def recording(path: Path, size: tuple[int, int]) -> torch.Tensor:
        seen.add(str(Path(path).resolve()))
        return original(path, size)

    data_layer.load_image = recording
    try:
        yield seen
    finally:
        data_layer.load_image = original


def _image_digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in images}


def _queries(subject: Subject, n: int = 8) -> torch.Tensor:
    return subject.ws.query.float_images(slice(0, n)).to(subject.device)


# -- rules ---------------------------------------------------------------------------------------------
def options_recorded(subject: Subject) -> tuple[bool, str]:
    """Every option is in `config()` (the checkpoint key), JSON-able, and rebuilds the same defense."""
    config = subject.defense.config()
    try:
        json.dumps(config)
    except TypeError as exc:
        return False, f"config() is not JSON-able ({exc}); rows and checkpoint keys cannot record it"
    fields = {f.name for f in dataclasses.fields(subject.defense.options)}
    missing = sorted(fields - set(config))
    if missing:
        return False, f"options missing from config(): {', '.join(missing)}"
    # the canonical form the run specification stores: the options that differ from the defaults
    rebuilt = type(subject.defense)(**changed_options(subject.defense.options)).config()
    if rebuilt != config:
        return False, "building the defense from its recorded options gives another config()"
    flat = [name for name in option_paths(type(subject.defense.options)) if "." not in name]
    return True, f"{len(flat)} option(s) recorded: " + (", ".join(flat) or "none")


def trains(subject: Subject) -> tuple[bool, str]:
    """fit() changes the model's parameters and leaves finite embeddings."""
    if not subject.fit.params_changed:
        return False, "fit() left every parameter as it was"
    emb = extract_embeddings(subject.deployed, subject.ws.query.images[:16], device=subject.device)
    if not torch.isfinite(emb).all():
        return False, "embeddings after fit() are not finite"
    return True, f"parameters changed in {subject.fit.seconds:.1f} s of training; embeddings finite"


def data_isolation(subject: Subject) -> tuple[bool, str]:
    """No test identity and no test image (file or pixels) reaches training."""
    ws = subject.ws
    train_ids = {int(p) for p in ws.train.pids if p > 0}
    test_ids = {int(p) for p in torch.cat([ws.query.pids, ws.gallery.pids]) if p > 0}
    if train_ids & test_ids:
        return False, f"{len(train_ids & test_ids)} test identities are in the training split"
    test_items = list(ws.dataset.query) + list(ws.dataset.gallery)
    test_paths = {str(Path(it.path).resolve()) for it in test_items}
    leaked = sorted(subject.fit.paths_read & test_paths)
    if leaked:
        return False, f"fit() read {len(leaked)} test image file(s) through the data layer, e.g. {leaked[0]}"
    shared = _image_digests(ws.train.images) & _image_digests(torch.cat([ws.query.images, ws.gallery.images]))
    if shared:
        return False, f"{len(shared)} training image(s) are pixel-identical to test images"
    return True, (f"{len(train_ids)} training vs {len(test_ids)} test identities disjoint; fit() read "
                  f"{len(subject.fit.paths_read)} file(s), none of the {len(test_paths)} test images; "
                  "no training image equals a test image")


def deterministic_eval(subject: Subject) -> tuple[bool, str]:
    """Eval-mode embeddings repeat bit for bit and do not depend on the batch (unless EOT is declared)."""
    eot = max(f.eot_samples for f in declared_forwards(subject.defense))
    x = _queries(subject)
    with torch.no_grad():
        first, second = subject.deployed.embed(x), subject.deployed.embed(x)
        alone = subject.deployed.embed(x[:1])
    if subject.deployed.training or subject.model.training:
        return False, "embedding switched the model to train mode"
    if not torch.equal(first, second):
        if eot > 1:
            return True, f"randomised, declared with EOT over {eot} samples"
        gap = float((first - second).abs().max())
        return False, (f"two eval-mode passes over the same images differ by up to {gap:.3g}: declare the "
                       "randomness as an adaptive forward with eot_samples > 1, or make it deterministic")
    if not torch.allclose(alone, first[:1], atol=ATOL, rtol=ATOL):
        gap = float((alone - first[:1]).abs().max())
        return False, f"a query's embedding depends on its batch (up to {gap:.3g}): batch statistics at test time?"
    return True, "repeat passes bit-identical; a query alone embeds as in its batch"


def input_gradients(subject: Subject) -> tuple[bool, str]:
    """Every declared adaptive forward outputs what the defense computes and has finite, non-zero gradients."""
    x = _queries(subject)
    with torch.no_grad():
        reference = subject.deployed.embed(x)
    notes = []
    for forward in declared_forwards(subject.defense):
        view = AttackView(subject.deployed, forward).eval()
        with torch.no_grad():
            value = view.attack_embed(x)
        if not torch.allclose(value, reference, atol=ATOL, rtol=ATOL):
            return False, f"[{forward.name}] the adaptive forward outputs something else than the defense"
        shifted = (x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device))
        x_req = shifted.clamp(0, 1).requires_grad_(True)
        (grad,) = torch.autograd.grad((view.attack_embed(x_req) - reference).pow(2).sum(), x_req)
        if not torch.isfinite(grad).all():
            return False, f"[{forward.name}] non-finite input gradient"
        norms = grad.flatten(1).abs().amax(1)
        if (norms == 0).any():
            return False, (f"[{forward.name}] zero input gradient on {int((norms == 0).sum())} of {len(x)} images: "
                           "white-box attacks would measure gradient masking; declare a differentiable surrogate "
                           "in adaptive_forwards()")
        notes.append(f"{forward.name} (median max|grad| {float(norms.median()):.2e})")
    return True, "finite, non-zero gradients through " + ", ".join(notes)


def attacks_leave_model(subject: Subject) -> tuple[bool, str]:
    """Attacks cannot change parameters, buffers or mode (the harness refuses such a cell)."""
    ws, device = subject.ws, subject.device
    qf = extract_embeddings(subject.deployed, ws.query.images, device=device)
    gf = extract_embeddings(subject.deployed, ws.gallery.images, device=device)
    clean = ws.query.float_images().to(device)
    view = attack_views(subject.defense, subject.deployed)[0]
    for name, budget in INTEGRITY_ATTACKS.items():
        ctx = attack_context(subject.spec, ws, qf, gf, device, name)
        run_attack(name, EPS, view, ws, ctx, subject.spec, clean, scaled_options(name, EPS, budget))
    return True, f"{', '.join(INTEGRITY_ATTACKS)} ran; parameters, buffers and mode unchanged; outputs in the ball"


def inference_cost(subject: Subject) -> tuple[bool, str]:
    """Backbone passes per query, declared (registry metadata `forward_passes`, default 1) and measured."""
    declared = DEFENSES.meta(subject.name).forward_passes if subject.name in DEFENSES else 1
    batches: list[int] = []
    handle = subject.model.backbone.register_forward_hook(lambda _m, inputs, _o: batches.append(len(inputs[0])))
    x = _queries(subject)
    try:
        with torch.no_grad():
            subject.deployed.embed(x)
    finally:
        handle.remove()
    with torch.no_grad():
        deployed_s = timed(lambda: subject.deployed.embed(x), subject.device, repeats=5)
        bare_s = timed(lambda: subject.model.embed(x), subject.device, repeats=5)
    measured = sum(batches) / len(x)
    detail = (f"declared {declared}, measured {measured:g} backbone pass(es) per query; deployed embedding "
              f"takes {deployed_s / max(bare_s, 1e-9):.1f}x the bare model's time")
    if measured > declared:
        detail += "; declare forward_passes in the defense's registry metadata"
    return measured <= declared, detail


def planted_example(subject: Subject) -> tuple[bool, str]:
    """The standard suite finds an adversarial example planted behind the defense's transform on every query the
    plant damages. The model behind the transform is the undefended reference of the small synthped (trained once,
    cached), not the briefly trained subject: the plant tests the attack's path through the transform and its
    adaptive forwards, and a model trained for one epoch moves AP too erratically to measure a share of damage."""
    reference, _ = train_or_load(subject.spec.defense, subject.spec, subject.ws, subject.device)
    check = planted_check(subject.defense, reference.eval(), subject.ws, SMALL_SYNTHPED, subject.device)
    return check.problem is None, check.detail()


RULES: tuple[Rule, ...] = (
    Rule("options-recorded", "every option recorded in config(), JSON-able, rebuilding the same defense",
         options_recorded),
    Rule("trains", "fit() trains the model and leaves finite embeddings", trains),
    Rule("data-isolation", "no test identity or test image reaches training", data_isolation),
    Rule("deterministic-eval", "eval-mode embeddings repeat and are batch-independent (or EOT declared)",
         deterministic_eval),
    Rule("input-gradients", "finite, non-zero input gradients through every adaptive forward", input_gradients),
    Rule("attack-integrity", "attacks leave parameters, buffers and mode unchanged", attacks_leave_model),
    Rule("inference-cost", "forward passes per query declared and measured", inference_cost),
    Rule("planted-example", "the standard suite reaches 95 % of an adversarial example planted inside the ε-ball "
         "behind the defense's transform, on every query it damages", planted_example),
)


@dataclass
class ValidationReport:
    """Every rule's result for one defense, with what it was validated on."""

    defense: str
    config: dict[str, Any]
    setup: dict[str, Any]
    results: list[RuleResult]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when every rule passed."""
        return all(r.passed for r in self.results)

    def failed(self) -> list[str]:
        """Names of the rules that failed."""
        return [r.rule for r in self.results if not r.passed]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the report file)."""
        return {"defense": self.defense, "config": self.config, "setup": self.setup, "passed": self.passed,
                "seconds": round(self.seconds, 1), "rules": [dataclasses.asdict(r) for r in self.results]}

    def markdown(self) -> str:
        """The report a submitter attaches: one row per rule."""
        verdict = "PASS" if self.passed else "FAIL: " + ", ".join(self.failed())
        lines = [f"# Admission check: `{self.defense}`", "", f"Result: **{verdict}** ({self.seconds:.0f} s)", "",
                 f"Config: `{json.dumps(self.config, sort_keys=True)}`", "",
                 f"Setup: `{json.dumps(self.setup, sort_keys=True)}`", "",
                 "| rule | result | evidence |", "|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.rule} | {'pass' if r.passed else 'FAIL'} | {r.detail.replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def _fit(defense: Defense, model: ReidModel, ws: Workspace, epochs: int, device: torch.device) -> FitRecord:
    before = [p.detach().clone() for p in model.parameters()]
    record = FitRecord()
    start = time.perf_counter()
    with record_reads() as reads:
        record.history = defense.fit(model, ws.train, TrainConfig(epochs=epochs, p=4, k=4), device)
    record.seconds = time.perf_counter() - start
    record.paths_read = set(reads)
    record.params_changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(),
                                                                                 strict=True))
    return record


def validate_defense(name: str, defense: Defense, *, epochs: int = 1, device: str = "cpu",
                     backbone: str = "reidnet-s", progress: Callable[[str], None] | None = None,
                     rules: tuple[str, ...] | None = None) -> ValidationReport:
    """Train `defense` briefly on the small synthped and check every admission rule (or those named) on it."""
    chosen = tuple(r for r in RULES if rules is None or r.name in rules)
    start = time.perf_counter()
    dev = torch.device(device)
    spec = make_spec(defense="none", dataset_options=SMALL_SYNTHPED, height=64, width=32, backbone=backbone)
    ws = load_workspace(spec)
    torch.manual_seed(0)
    model = ReidModel(ModelConfig(backbone, len(torch.unique(ws.train.pids)), 64, 32)).to(dev)
    setup = {"dataset": "synthped", "dataset_options": SMALL_SYNTHPED, "backbone": backbone, "epochs": epochs,
             "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        fit = _fit(defense, model, ws, epochs, dev)
    except Exception as exc:  # nothing else can be checked on a model that does not train
        results = [RuleResult(rule.name, False, f"fit() raised {type(exc).__name__}: {exc}" if rule.name == "trains"
                              else "not checked: fit() failed") for rule in chosen]
        return ValidationReport(name, defense.config(), setup, results, time.perf_counter() - start)
    model.eval()
    deployed = deploy(defense, model)  # as every run deploys it
    subject = Subject(name, defense, model, deployed, ws, spec, fit, dev)
    results = []
    for rule in chosen:
        if progress:
            progress(rule.name)
        try:
            passed, detail = rule.check(subject)
        except BenchmarkError as exc:  # the harness's own refusals (e.g. an attack changed the model)
            passed, detail = False, str(exc)
        except Exception as exc:  # a submitted defense may break anywhere: the report names the rule
            passed, detail = False, f"raised {type(exc).__name__}: {exc}"
        results.append(RuleResult(rule.name, passed, detail))
    return ValidationReport(name, defense.config(), setup, results, time.perf_counter() - start)
