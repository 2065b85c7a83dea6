"""Upstream training parity: one training step of rsitr equals one step of the upstream training code.

``../shared/data/upstream_parity/<method>_train.pt`` (GaLR, AMFMN, SWAN, KAMCL, PIR, FISVL) holds what the upstream
train step computed on a fixed batch with the forward references' procedural weights: every loss term, the total
it backpropagates and the L2 norm of the gradient of every upstream parameter (plus a few full gradients), for a
main case and the files' extra cases (other epochs, duplicated image ids). As the README there says, rsitr is built
from the shipped config with the stored overrides (``model.upstream_compat=true``, dropout 0, the BatchNorm mode
upstream trains with, the loss terms' upstream flags), put in train mode with every dropout at p = 0, and runs one
step the way engine/train_loop.py does: ``on_train_step_start()`` (KAMCL's momentum update), ``model(batch)``, the
configured criterion, ``backward()``. Each upstream key is mapped to the rsitr parameter it is loaded into by
``convert_upstream`` (the converted tensor is the upstream tensor or a view of it: SWAN's word embedding is cut to
the vocabulary, and the cut rows are never looked up, so their upstream gradient is 0).

Pass (the files' ``tolerance``): per loss term and the total |rsitr - ref| <= max(5e-6 |ref|, 10 noise) + 1e-6; per
gradient norm |rsitr - ref| <= max(1e-3 ref, 10 noise) + 1e-5 grad_total_norm; per full gradient max |rsitr - ref| <=
max(1e-3 max |ref|, 10 noise) + 1e-6 grad_total_norm; the same parameters have gradients.

Every upstream quirk the references pin down is switched off once (:data:`QUIRKS`) and must then fail that check,
and rsitr's deliberate defaults (same-image masking, the affiliation's eps and symmetric text term, the fixed scene
loss, length-based caption weights, eval-mode frozen BatchNorm, ...) must give other values. Loss-only switches are
evaluated on the step's own (detached) model outputs, so each model is built once per module and runs a handful of
steps. PIR and FISVL (150-185M parameters) are marked slow. Skips cleanly when ../shared is absent.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from core.config import load_config
from losses import build_criterion
from models.registry import build_model
from tests.models.test_parity import PARITY, SHARED, _batches, _context, _write_side_files, _write_weights

HEAVY = ("pir", "fisvl")
METHODS = [pytest.param(m, id=m, marks=[pytest.mark.slow] if m in HEAVY else [])
           for m in ("galr", "amfmn", "swan", "kamcl", "pir", "fisvl")]
# rsitr loss term -> the upstream term of ``loss_terms`` it is (upstream value = config weight x rsitr value)
UPSTREAM_TERM = {"triplet": "triplet", "moco_ce": "moco_ce10", "concept_bce": "concept_bce10", "infonce": "contr",
                 "weighted_infonce": "contr", "affiliation": "affil", "fisvl_scene": "scene"}
# upstream input name -> rsitr batch key (training-only inputs; the rest is fed as in the forward reference)
TRAIN_INPUTS = {"idx": "img_ids", "label": "scene_ids", "length": "cap_weight"}


# ------------------------------------------------------------------------------------------------- the step
@dataclass
class Step:
    """One step's results: logged losses, gradient norm / full gradient per upstream key, detached outputs."""

    losses: dict[str, float]
    norms: dict[str, float]
    grads: dict[str, torch.Tensor]
    with_grad: set[str]  # upstream keys whose rsitr parameter got a gradient (plus unmapped rsitr names)
    outputs: dict[str, Any]


class Setup:
    """One method's reference, its rsitr model (built once) and what a step needs."""

    def __init__(self, method: str, tmp: Path) -> None:
        path = PARITY / f"{method}_train.pt"
        if not path.is_file():
            pytest.skip(f"{path} not available")
        self.ref = ref = _reference_train(path)
        self.method, self.tmp = method, tmp
        ctx = _context(ref)
        ckpt = _write_weights(ref, tmp)
        _write_side_files(ref, tmp)
        if method == "kamcl":
            (tmp / "tags.txt").write_text("\n".join(ref["tags_lines"]) + "\n")
        self.sets = [o.format(ckpt=ckpt, tmp=tmp) for o in ref["rsitr_overrides"]]
        self.cfg = load_config(ref["rsitr_config"], self.sets)
        self.model = build_model(self.cfg.model, ctx, ref["rsitr_config"])
        self.model.train()
        for module in self.model.modules():  # upstream ran with every dropout disabled (README step 2)
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
            if type(module).__name__ == "DropPath":
                module.drop_prob = 0.0
        state = torch.load(ckpt, weights_only=True)["model"]
        self.keymap = upstream_to_rsitr(self.model, state)
        # what a step may change without an optimiser: buffers (BatchNorm statistics, KAMCL queues) and frozen
        # parameters (KAMCL's key encoders); every case starts again from the loaded values
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict(keep_vars=True).items()
                        if not (isinstance(v, nn.Parameter) and v.requires_grad)}
        self._cache: dict[str, Step] = {}

    # --------------------------------------------------------------------------------------------- cases
    def cases(self) -> list[dict]:
        """The main case (named ``main``) and the extra cases, each a dict with the reference values."""
        ref = self.ref
        main = {k: ref[k] for k in ("epoch", "case_inputs", "loss_terms", "loss_total", "rsitr_terms", "grad_norms",
                                    "grad_total_norm", "grads", "n_params_with_grad", "params_without_grad",
                                    "noise")}
        return [{"name": "main", **main}] + list(ref.get("extra_cases", []))

    def case(self, name: str) -> dict:
        return next(c for c in self.cases() if c["name"] == name)

    def batch(self, case: dict) -> dict[str, Any]:
        """The forward reference's image and text batches plus the training-only inputs of ``case``."""
        ref = self.ref
        inputs = {**ref["inputs"], **{k: torch.tensor(v) for k, v in case["case_inputs"].items()}}
        images, texts = _batches({**ref, "inputs": inputs})
        if "filenames" in images:
            images["filenames"] = [f"img{i}.tif" for i in range(ref["batch"])]
        batch = {**images, **texts, "img_ids": torch.arange(ref["batch"])}
        batch.update({key: inputs[name] for name, key in TRAIN_INPUTS.items() if name in inputs})
        return batch

    # ---------------------------------------------------------------------------------------------- steps
    def reset(self) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict(keep_vars=True).items():
                if k in self.initial:
                    v.copy_(self.initial[k])

    def step(self, name: str = "main", backward: bool = True) -> Step:
        """One training step of case ``name`` from the loaded weights (cached: the model is not changed)."""
        if name not in self._cache:
            self._cache[name] = self.run(self.case(name), backward)
        return self._cache[name]

    def run(self, case: dict, backward: bool = True) -> Step:
        """One step as engine/train_loop.py runs it; ``backward=False`` computes the losses only."""
        model, batch = self.model, self.batch(case)
        criterion = build_criterion(self.cfg.loss)
        self.reset()
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            model.on_train_step_start()
            outputs = model(batch)
            losses = criterion(outputs, batch, case["epoch"])
            if backward:
                losses["loss"].backward()
        params = dict(model.named_parameters())
        norms, grads, with_grad = {}, {}, set()
        if backward:
            for up, own in self.keymap.items():
                g = params[own].grad if own in params else None
                norms[up] = 0.0 if g is None else g.double().norm().item()
                if up in case["grads"] and g is not None:
                    grads[up] = g.detach().clone()
            inverse = {own: up for up, own in self.keymap.items()}
            with_grad = {inverse.get(n, n) for n, p in params.items() if p.grad is not None}
        return Step({k: v.item() for k, v in losses.items()}, norms, grads, with_grad,
                    {k: v.detach() if torch.is_tensor(v) else v for k, v in outputs.items()})

    def losses_with(self, name: str, loss_sets: list[str], batch_changes: dict | None = None) -> dict[str, float]:
        """The losses of case ``name``'s step outputs under a criterion with ``loss_sets`` applied."""
        case = self.case(name)
        cfg = load_config(self.ref["rsitr_config"], self.sets + loss_sets)
        batch = {**self.batch(case), **(batch_changes or {})}
        with torch.no_grad():
            out = build_criterion(cfg.loss)(self.step(name).outputs, batch, case["epoch"])
        return {k: v.item() for k, v in out.items()}


def _reference_train(path: Path) -> dict:
    ref = torch.load(path, weights_only=True)
    for need in (SHARED / "tools" / "parity_weights.py", SHARED / ref["keys_file"]):
        if not need.is_file():
            pytest.skip(f"{need} not available")
    return ref


def upstream_to_rsitr(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{upstream key: rsitr parameter name} for every upstream tensor ``convert_upstream`` places unchanged or as a
    view (same storage)."""
    converted, _ = model.convert_upstream(state)
    by_storage = {v.untyped_storage().data_ptr(): k for k, v in converted.items()}
    params = dict(model.named_parameters())
    out = {}
    for key, value in state.items():
        own = by_storage.get(value.untyped_storage().data_ptr())
        if own in params:
            out[key] = own
    return out


# ------------------------------------------------------------------------------------------------ checking
def loss_failures(losses: dict[str, float], case: dict, cfg: Any, tol: dict) -> list[str]:
    """Every loss term and the total outside the tolerance (or terms logged that the reference does not have)."""
    t, noise = tol["loss"], case["noise"]
    weights = {term.name: term.weight for term in cfg.loss.terms}
    out = []
    logged = {k.removeprefix("loss_") for k in losses if k != "loss"}
    if logged != set(case["rsitr_terms"]):
        out.append(f"terms {sorted(logged)} != reference {sorted(case['rsitr_terms'])}")
    for term, value in case["rsitr_terms"].items():
        up = UPSTREAM_TERM[term]
        n = noise["loss_terms"][up] / weights[term]
        got = losses.get(f"loss_{term}", float("nan"))
        if not abs(got - value) <= max(t["rtol"] * abs(value), t["noise_factor"] * n) + t["atol"]:
            out.append(f"loss_{term}: {got!r} vs {value!r}")
    total = case["loss_total"]
    lim = max(t["rtol"] * abs(total), t["noise_factor"] * noise["loss_total"]) + t["atol"]
    if not abs(losses["loss"] - total) <= lim:
        out.append(f"loss: {losses['loss']!r} vs {total!r}")
    return out


def grad_failures(step: Step, case: dict, tol: dict) -> list[str]:
    """Gradient norms and full gradients outside the tolerance, and parameters whose gradient presence differs."""
    t, tg, noise, total = tol["grad_norm"], tol["grad"], case["noise"], case["grad_total_norm"]
    out = []
    for key, ref in case["grad_norms"].items():
        got = step.norms.get(key)
        lim = max(t["rtol"] * ref, t["noise_factor"] * noise["grad_norms"][key]) + t["atol_frac_of_total"] * total
        if got is None or not abs(got - ref) <= lim:
            out.append(f"grad norm {key}: {got!r} vs {ref!r} (limit {lim:.3g})")
    for key, ref in case["grads"].items():
        got = step.grads.get(key)
        lim = max(tg["rtol_of_max"] * ref.abs().max().item(), tg["noise_factor"] * noise["grads"][key])
        lim += tg["atol_frac_of_total"] * total
        diff = None if got is None else (got.reshape(ref.shape) - ref).abs().max().item()
        if diff is None or not diff <= lim:
            out.append(f"grad {key}: max diff {diff!r} (limit {lim:.3g})")
    if step.with_grad != set(case["grad_norms"]):
        out.append(f"parameters with a gradient: extra {sorted(step.with_grad - set(case['grad_norms']))[:5]}, "
                   f"missing {sorted(set(case['grad_norms']) - step.with_grad)[:5]}")
    return out


@pytest.fixture(scope="module", params=METHODS)
def setup(request, tmp_path_factory) -> Setup:
    return Setup(request.param, tmp_path_factory.mktemp(f"{request.param}_train"))


def test_reference_is_consistent(setup: Setup) -> None:
    """The mapping covers every upstream parameter with a gradient, and the term names/weights line up."""
    ref = setup.ref
    assert len(ref["grad_norms"]) == ref["n_params_with_grad"]
    assert set(ref["grad_norms"]) <= set(setup.keymap), sorted(set(ref["grad_norms"]) - set(setup.keymap))[:5]
    weights = {t.name: t.weight for t in setup.cfg.loss.terms}
    for case in setup.cases():
        for term, value in case["rsitr_terms"].items():
            assert case["loss_terms"][UPSTREAM_TERM[term]] == pytest.approx(weights[term] * value, rel=1e-6)


def test_train_step_matches_upstream(setup: Setup) -> None:
    """Every case: loss terms, total, gradient norms and full gradients equal upstream's within the tolerance."""
    ref, failures = setup.ref, {}
    for case in setup.cases():
        step = setup.step(case["name"])
        print(f"{setup.method}/{case['name']}: loss {step.losses['loss']:.7f} (upstream {case['loss_total']:.7f})")
        bad = loss_failures(step.losses, case, setup.cfg, ref["tolerance"]) + grad_failures(step, case,
                                                                                             ref["tolerance"])
        if bad:
            failures[case["name"]] = bad[:10]
    assert not failures, failures


def test_kamcl_side_inputs_and_momentum_keys(setup: Setup) -> None:
    """KAMCL: the tag targets / multi-hot rsitr derives are upstream's inputs, and the momentum update moves exactly
    the key-encoder parameters upstream's zip reaches (``momentum_updated_keys``)."""
    if setup.method != "kamcl":
        pytest.skip("KAMCL only")
    model, ref, batch = setup.model, setup.ref, setup.batch(setup.case("main"))
    assert torch.equal(model.tag_target(batch["filenames"]), ref["inputs"]["imagetag"])
    assert torch.equal(model.tag_multi_hot(batch["tokens"]), ref["inputs"]["text_onehot"])
    setup.reset()
    before = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    model.on_train_step_start()
    moved = {k for k, p in model.named_parameters() if k in before and not torch.equal(p, before[k])}
    setup.reset()
    expected = {setup.keymap[k] for k in ref["momentum_updated_keys"]}
    assert len(expected) == len(ref["momentum_updated_keys"]) == 2 * ref["momentum_counts"]["updated_per_encoder"]
    assert moved == expected, (sorted(moved - expected)[:3], sorted(expected - moved)[:3])


# ------------------------------------------------------------------------------------------- quirks off
@dataclass(frozen=True)
class Quirk:
    """An upstream behaviour and how to switch it off: loss overrides (evaluated on the case's step outputs) or a
    change of the built model (``model_off(setup)`` returns the function that restores it; the step is rerun)."""

    method: str
    name: str
    case: str = "main"
    loss_sets: tuple[str, ...] = ()
    batch: dict = field(default_factory=dict)
    model_off: Callable[[Setup], Callable[[], None]] | None = None
    grads: bool = False  # the quirk shows in the gradients only (the step is rerun with backward)


def _params_off(attr: str, **changes: Any) -> Callable[[Setup], Callable[[], None]]:
    """Switch a model param (read by ``model.train()``) to rsitr's default on the built model."""
    def off(setup: Setup) -> Callable[[], None]:
        model = setup.model
        old = getattr(model, attr)
        setattr(model, attr, dataclasses.replace(old, **changes))
        model.train()

        def restore() -> None:
            setattr(model, attr, old)
            model.train()
        return restore
    return off


def _bert_padding_idx(setup: Setup) -> Callable[[], None]:
    """rsitr's default: transformers' padding_idx (the [PAD] row gets no gradient)."""
    emb = setup.model.text_encoder.embeddings.word_embeddings
    emb.padding_idx = setup.model.text_encoder.config.pad_token_id

    def restore() -> None:
        emb.padding_idx = None
    return restore


def _momentum_all(setup: Setup) -> Callable[[], None]:
    """rsitr's default: the momentum update moves every key parameter."""
    setup.model.momentum_zip = False

    def restore() -> None:
        setup.model.momentum_zip = True
    return restore


DUP_IDS = {"img_ids": torch.tensor([0, 1, 0])}  # captions 0 and 2 of one image: upstream still masks the diagonal only
HINGES = [
    ("summed hinges (not the hardest negative)", ("loss.terms.0.params.mode=hardest",), {}),
    ("hinges summed over the batch (not averaged)", ("loss.terms.0.params.reduction=mean",), {}),
    ("only the diagonal masked (rsitr default masks captions of the same image)",
     ("loss.terms.0.params.mask_same_image=true",), DUP_IDS),
]
SCENE_OFF = "loss.terms.2.params.upstream_compat=false"
QUIRKS = [Quirk(m, name, loss_sets=sets, batch=batch) for m in ("galr", "amfmn", "swan")
          for name, sets, batch in HINGES] + [
    Quirk("swan", "frozen ResNet BatchNorm in train mode (backbone_bn: train)", model_off=_params_off(
        "p", backbone_bn="eval")),
    Quirk("kamcl", "triplet always takes the hardest negative", loss_sets=("loss.terms.0.params.mode=sum",)),
    Quirk("kamcl", "concept BCE only for epoch > 10", case="epoch10_no_bce",
          loss_sets=("loss.terms.2.start_epoch=10",)),
    Quirk("kamcl", "momentum update zips visual and text parameter lists", model_off=_momentum_all),
    Quirk("kamcl", "only the diagonal masked (rsitr default masks captions of the same image)",
          loss_sets=("loss.terms.0.params.mask_same_image=true",), batch={"img_ids": torch.tensor([0, 1, 0, 3])}),
    Quirk("pir", "affiliation centres without eps", loss_sets=("loss.terms.1.params.eps=6e-5",)),
    Quirk("pir", "affiliation text term transposed", loss_sets=("loss.terms.1.params.upstream_compat=false",)),
    Quirk("pir", "multi-positive InfoNCE targets", case="dup_idx", loss_sets=("loss.terms.0.params.multi_positive=false",)),
    Quirk("pir", "frozen ResNet BatchNorm in train mode (resnet_bn: train)", model_off=_params_off("p", resnet_bn="eval")),
    Quirk("pir", "BERT word embedding without padding_idx", model_off=_bert_padding_idx, grads=True),
    Quirk("fisvl", "scene weights truncated to integers", loss_sets=(
        SCENE_OFF, "loss.terms.2.params.int_weights=false", "loss.terms.2.params.mask_positives=false")),
    Quirk("fisvl", "scene-loss positive mask never matches", loss_sets=(
        SCENE_OFF, "loss.terms.2.params.int_weights=true", "loss.terms.2.params.mask_positives=true")),
    Quirk("fisvl", "affiliation text term transposed", loss_sets=("loss.terms.1.params.upstream_compat=false",)),
    Quirk("fisvl", "affiliation centres with eps 6e-5", loss_sets=("loss.terms.1.params.eps=0.0",)),
    Quirk("fisvl", "weighted contrastive weights from the batch (length field)", case="epoch10_weighted",
          loss_sets=("loss.terms.3.params.weight_source=length",)),
    Quirk("fisvl", "scene loss left out from epoch 10", case="epoch10_weighted", loss_sets=("loss.terms.2.end_epoch=-1",)),
    Quirk("fisvl", "frozen ResNet BatchNorm in train mode (resnet_bn: train)", model_off=_params_off("p", resnet_bn="eval")),
    Quirk("fisvl", "BERT word embedding without padding_idx", model_off=_bert_padding_idx, grads=True),
]


def test_every_quirk_is_pinned_down(setup: Setup) -> None:
    """Switched off, each upstream quirk (rsitr's default behaviour) gives values outside the tolerance."""
    quirks = [q for q in QUIRKS if q.method == setup.method]
    assert quirks
    tol, passed = setup.ref["tolerance"], []
    for q in quirks:
        case = setup.case(q.case)
        if q.model_off is None:
            failures = loss_failures(setup.losses_with(q.case, list(q.loss_sets), q.batch), case, setup.cfg, tol)
        else:
            restore = q.model_off(setup)
            try:
                step = setup.run(case, backward=q.grads)
            finally:
                restore()
            failures = loss_failures(step.losses, case, setup.cfg, tol)
            if q.grads:
                assert not failures, (q.name, failures)  # the forward is the same: only gradients move
                failures = grad_failures(step, case, tol)
        print(f"{setup.method}: off '{q.name}': {failures[:2]}")
        if not failures:
            passed.append(q.name)
    assert not passed, f"switching these off still matches upstream: {passed}"


def test_upstream_ignores_image_ids_in_the_triplet(setup: Setup) -> None:
    """The positive side of the masking check: with ``mask_same_image: false`` duplicated image ids change nothing
    (upstream masks the diagonal only), so the dup-id failure above is the mask's doing."""
    if setup.method not in ("galr", "amfmn", "swan", "kamcl"):
        pytest.skip("triplet methods only")
    ids = torch.tensor([0, 1, 0] + [3] * (setup.ref["batch"] - 3))
    losses = setup.losses_with("main", [], {"img_ids": ids})
    assert not loss_failures(losses, setup.case("main"), setup.cfg, setup.ref["tolerance"])
