"""Tests generated from the certifier registry (methods/certify/registry.py): a certifier is tested the moment it
registers.

For every certifier: on a model of a threat model it serves, the certify step writes the per-example TSV in the
shared format (methods/core/tsv.py) and a sidecar with the common keys plus the certifier's own settings, and every
radius respects the format's rules and the certifier's cliff; on a model of every other threat model it refuses,
naming both. The models are untrained (the format does not depend on accuracy) and tiny: digits, 4 test images.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from methods import config as mc
from methods.certify.registry import CERTIFIERS, BatchEvaluator, SmoothingCertifier, certifier_spec
from methods.certify.step import certify_run
from methods.checkpoint import save_model
from methods.core import data, models
from methods.core.interface import THREAT_MODELS
from methods.core.tsv import TSV_COLUMNS, read_tsv
from methods.registry import METHODS
from methods.train.build import build_training

#: Sidecar keys every certifier writes, whatever its kind.
COMMON_SIDECAR = {"certifier", "norm", "kind", "sigma", "max_radius", "subset", "shard", "shards", "path", "dtype",
                  "model", "model_info", "provenance"}  # fmt: skip
#: One registered method per threat model (the first the registry lists), to build a model of that threat model.
METHOD_OF = {tm: next(n for n, m in METHODS.items() if m.THREAT_MODEL == tm) for tm in THREAT_MODELS}


def _spec(method: str) -> dict:
    config = mc.load()
    run = next(name for name, r in config["runs"].items() if r["method"] == method)
    spec = mc.resolve_run(config, run, seed=0)
    spec["device"] = "cpu"
    # small_cnn's own width (16), not the default config's 8: an untrained width-8 net can sit in dead ReLUs where
    # PGD has no gradient, and the single-ε test relies on the attack reaching every image at ε = 1
    spec["model"]["width"] = None
    spec["certify"].update(n0=10, n=100, batch_size=50, skip=50, count=4, eps_grid=[0.05, 0.1], compile=False,
                           attack_eps=0.1)  # fmt: skip
    return spec


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """threat model -> (model file, spec): an untrained model of the method that stands for it."""
    out = {}
    for threat_model, method_name in METHOD_OF.items():
        spec = _spec(method_name)
        torch.manual_seed(0)
        model = build_training(spec, torch.device("cpu")).model.eval()
        method = METHODS[method_name]
        info = {"method": method_name, "dataset": spec["dataset"], "num_classes": 10, "hparams": spec["hparams"],
                "epochs_done": 0, "threat_model": threat_model, "device": "cpu", "run": spec["run"], "seed": 0,
                **models.file_info(spec["model"], "digits", getattr(method, "ARCH", None))}  # fmt: skip
        path = tmp_path_factory.mktemp(threat_model) / "model.pt"
        save_model(model, info, path)
        out[threat_model] = (path, spec)
    return out


@pytest.mark.parametrize("certifier", sorted(CERTIFIERS))
def test_the_certifier_declares_what_it_is(certifier):
    entry = CERTIFIERS[certifier]
    assert entry.norm in ("l2", "linf") and entry.kind in ("certified", "empirical")
    assert entry.threat_models and set(entry.threat_models) <= set(THREAT_MODELS)
    assert isinstance(entry, (SmoothingCertifier, BatchEvaluator))
    if entry.kind == "empirical":
        assert "empirical" in entry.note, "an empirical evaluator's rows must say they are not certificates"
    spec = _spec(METHOD_OF[entry.threat_models[0]])
    assert set(certifier_spec(spec, certifier)["certify"]) == set(entry.settings) & set(spec["certify"])


@pytest.mark.parametrize("certifier", sorted(CERTIFIERS))
def test_the_certifier_writes_the_shared_format(certifier, model_files, tmp_path):
    entry = CERTIFIERS[certifier]
    model, spec = model_files[entry.threat_models[0]]
    out = certify_run(model, spec, tmp_path / f"{certifier}.tsv", certifier, device="cpu", progress=False)
    assert out.read_text().splitlines()[0].split("\t") == list(TSV_COLUMNS)
    frame = read_tsv(out)
    test_size = len(data.load("digits", "test"))
    assert list(frame["idx"]) == list(range(0, test_size, 50))[:4]
    assert ((frame["correct"] == 1) == (frame["predict"] == frame["label"])).all()
    assert (frame.loc[frame["correct"] == 0, "radius"] == 0).all() and (frame["radius"] >= 0).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    cfg = spec["certify"]
    assert COMMON_SIDECAR | set(entry.record(cfg)) <= set(sidecar)
    assert (sidecar["certifier"], sidecar["norm"], sidecar["kind"]) == (certifier, entry.norm, entry.kind)
    assert sidecar["subset"] == {"start": 0, "skip": 50, "count": 4, "examples": 4}
    cliff = entry.max_radius(cfg, 10)
    assert sidecar["max_radius"] == cliff
    if cliff is not None:
        assert math.isfinite(cliff) and (frame["radius"] <= cliff + 1e-12).all()
    if isinstance(entry, SmoothingCertifier):
        assert (frame["samples"] > 0).all() and (frame["samples"] <= cfg["n0"] + cfg["n"]).all()
    else:
        assert (frame["samples"] == 0).all() and set(frame["path"]) == {"batch"}


@pytest.mark.parametrize(
    "certifier, threat_model",
    [(c, tm) for c in sorted(CERTIFIERS) for tm in THREAT_MODELS if tm not in CERTIFIERS[c].threat_models],
)
def test_the_certifier_refuses_a_threat_model_it_cannot_serve(certifier, threat_model, model_files, tmp_path):
    model, spec = model_files[threat_model]
    with pytest.raises(ValueError, match=f"certifier {certifier} needs a .* model; .* is {threat_model}"):
        certify_run(model, spec, tmp_path / "out.tsv", certifier, device="cpu", progress=False)
    assert not (tmp_path / "out.tsv").exists()


def test_a_single_eps_attack_gives_eps_exactly_where_the_attack_fails(model_files, tmp_path):
    """*-at-eps: radius ε where the clean prediction is right and the one attack at ε fails, else 0; at a tiny ε no
    attack can flip a confident prediction, at a huge one every prediction flips."""
    model, spec = model_files["linf-empirical"]
    frames = {}
    for eps in (1e-6, 1.0):
        spec = {**spec, "certify": {**spec["certify"], "attack_eps": eps, "count": 8, "skip": 20}}
        out = certify_run(model, spec, tmp_path / f"{eps}.tsv", "pgd20-at-eps", device="cpu", progress=False)
        frames[eps] = read_tsv(out)
        assert set(frames[eps]["radius"]) <= {0.0, eps}
        assert json.loads(out.with_suffix(".json").read_text())["attack_eps"] == eps
    tiny, huge = frames[1e-6], frames[1.0]
    assert (tiny["radius"] > 0).sum() == tiny["correct"].sum()  # nothing flips at 1e-6
    assert (huge["radius"] == 0).all()  # at ε = 1 the attack reaches any image
