"""Schema and cross-field validation: bad configs fail before anything runs, naming the field."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from methods import cohen
from methods import config as mc

REPO = Path(__file__).resolve().parents[1]
BASE = {"runs": {"cohen-0.25": {"method": "cohen", "hparams": {"sigma": 0.25}}}}


def with_(**changes) -> dict:
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


@pytest.mark.parametrize(
    "cfg,field,words",
    [
        (with_(runs={"x": {"method": "no-such-method"}}), "runs.x.method", "is not one of"),
        (with_(runs={"x": {"method": "cohen", "hparams": {"sigma": -0.25}}}), "runs.x.hparams.sigma", "> 0"),
        (with_(runs={"x": {"method": "cohen", "hparams": {"sigma": 0}}}), "runs.x.hparams.sigma", "> 0"),
        (with_(runs={"x": {"method": "cohen", "hparams": {"sgima": 0.5}}}), "runs.x.hparams", "sgima"),
        (with_(certify__n0=1000, certify__n=100), "runs.cohen-0.25.certify.n0", "exceeds n"),
        (with_(runs={"x": {"method": "cohen", "certify": {"n0": 50, "n": 10}}}), "runs.x.certify.n0", "exceeds n"),
        (with_(certify__alpha=1.5), "certify.alpha", "1.5"),
        (with_(train__epochs=0), "train.epochs", "0"),
        (with_(train__optimiser="adam"), "train", "optimiser"),
        (with_(dataset="cifar100"), "dataset", "cifar100"),
        (with_(train__schedule="multistep"), "runs.cohen-0.25.train.milestones", "needs milestones"),
        ({"runs": {}}, "runs", "non-empty"),
        (with_(model__width=0), "model.width", "minimum"),
        (with_(runs={"x": {"method": "cohen", "model": {"arch": "lenet", "width": 8}}}), "runs.x.model.width", "lenet"),
        ({}, "<top level>", "give `runs` (named runs) and/or `grids`"),
    ],
)
def test_bad_configs_name_the_field(cfg, field, words):
    with pytest.raises(mc.ConfigError) as err:
        mc.validate(cfg)
    message = str(err.value)
    assert f"config error at {field}:" in message
    assert words in message


def test_defaults_are_filled_and_run_overrides_only_override_what_they_name():
    cfg = mc.validate(with_(train__epochs=7, runs={"a": {"method": "cohen", "train": {"lr": 0.5}}}))
    spec = mc.resolve_run(cfg, "a", seed=3)
    assert spec["train"]["lr"] == 0.5  # the run's override
    assert spec["train"]["epochs"] == 7  # the experiment-wide setting, not the schema default (90)
    assert spec["train"]["momentum"] == 0.9  # the schema default
    assert spec["certify"]["sigma"] == 0.25  # certify at the training sigma (Cohen's default hparams)
    assert spec["seed"] == 3 and spec["method"] == "cohen" and spec["threat_model"] == "l2-smoothing"
    assert cfg["runs"]["a"] == {"method": "cohen", "train": {"lr": 0.5}}  # run entries are not default-filled


def test_runs_of_expands_dataset_run_seed():
    cfg = mc.validate(
        {
            "seeds": [0, 1],
            "runs": {"a": {"method": "cohen"}, "b": {"method": "cohen", "seeds": [5], "dataset": "mnist"}},
        }
    )
    assert mc.runs_of(cfg) == [("digits", "a", 0), ("digits", "a", 1), ("mnist", "b", 5)]


def test_adding_a_seed_or_changing_resources_leaves_existing_specs_alone():
    """Specs are Snakemake params: anything in them that changes reruns the step."""
    before = mc.resolve_run(mc.validate(with_(seeds=[0])), "cohen-0.25", 0)
    after = mc.resolve_run(
        mc.validate(with_(seeds=[0, 1], resources={"train": {"threads": 8}}, report={"radius_max": 3.0})),
        "cohen-0.25",
        0,
    )
    assert mc.spec_json(before) == mc.spec_json(after)


def test_spec_json_is_canonical():
    a = mc.spec_json({"b": 1, "a": {"d": 2, "c": 3}})
    assert a == mc.spec_json({"a": {"c": 3, "d": 2}, "b": 1}) == '{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = mc.load(REPO / "config" / name)
    for _dataset, run, seed in mc.runs_of(cfg):
        mc.resolve_run(cfg, run, seed)


@pytest.mark.parametrize("dataset", sorted(cohen.PAPER))
def test_paper_configs_carry_cohens_settings(dataset):
    """config/<dataset>.yaml's Cohen runs are exactly METHODS.md §1 (as transcribed in cohen.PAPER)."""
    paper = cohen.PAPER[dataset]
    cfg = mc.load(REPO / "config" / f"{dataset}.yaml")
    runs = [r for r in cfg["runs"] if cfg["runs"][r]["method"] == "cohen"]
    sigmas = sorted(mc.resolve_run(cfg, r, 0)["hparams"]["sigma"] for r in runs)
    assert sigmas == sorted(paper["sigmas"])
    for run in runs:
        spec = mc.resolve_run(cfg, run, 0)
        assert spec["dataset"] == dataset
        assert spec["model"]["arch"] == paper["arch"]
        for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "step_size", "gamma"):
            assert spec["train"][key] == paper[key], key
        assert (spec["certify"]["n0"], spec["certify"]["n"], spec["certify"]["alpha"]) == (100, 100_000, 0.001)


def test_snakemake_refuses_a_bad_config_before_running_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs": {"x": {"method": "cohen", "hparams": {"sigma": -1}}}}))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "config error at runs.x.hparams.sigma: must be > 0" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs": {"x": {"method": "cohen", "certify": {"n0": 10, "n": 5}}}}))
    out = subprocess.run(
        [sys.executable, "-m", "methods", "train", "--configfile", str(bad), "--run", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: config error at runs.x.certify.n0: n0 = 10 exceeds n = 5"


# ---------------------------------------------------------------- grids, notes, the other methods' paper runs


def _grid_config(**grid):
    return {
        "grids": {
            "g": {
                "method": "salman",
                "name": "s-{attack}{steps}-eps{epsilon:.2f}",
                "hparams": {"attack": ["pgd", "ddn"], "steps": [2, 4], "epsilon": 0.5},
                **grid,
            }
        }
    }


def test_grids_expand_to_one_run_per_combination():
    cfg = mc.validate(_grid_config(train={"epochs": 7}, note="a caveat"))
    assert sorted(cfg["runs"]) == ["s-ddn2-eps0.50", "s-ddn4-eps0.50", "s-pgd2-eps0.50", "s-pgd4-eps0.50"]
    spec = mc.resolve_run(cfg, "s-ddn4-eps0.50", 0)
    assert (spec["hparams"]["attack"], spec["hparams"]["steps"], spec["hparams"]["epsilon"]) == ("ddn", 4, 0.5)
    assert spec["train"]["epochs"] == 7 and "grids" not in spec and "note" not in spec
    assert mc.notes_of(cfg) == {name: "a caveat" for name in cfg["runs"]}


@pytest.mark.parametrize(
    "grid, words",
    [
        ({"name": "s-{attack}"}, "run 's-pgd' is defined twice"),
        ({"name": "s-{attack}-{k}"}, "{k} is not one of the grid's hparams"),
        ({"name": "s/{attack}{steps}"}, "is not a valid run name"),
        ({"hparams": {"steps": []}}, "an empty list sweeps nothing"),
    ],
)
def test_bad_grids_are_refused(grid, words):
    with pytest.raises(mc.ConfigError, match="config error at grids.g") as err:
        mc.validate(_grid_config(**grid))
    assert words in str(err.value)


def test_grid_run_may_not_shadow_a_named_run():
    raw = _grid_config() | {"runs": {"s-pgd2-eps0.50": {"method": "cohen"}}}
    with pytest.raises(mc.ConfigError, match="defined twice"):
        mc.validate(raw)


def test_t_certify_split_must_sum_to_one():
    raw = {"certify": {"t_certify_split": [0.5, 0.25, 0.5]}, "runs": {"x": {"method": "cohen"}}}
    with pytest.raises(mc.ConfigError, match="t_certify_split: the fractions of alpha must sum to 1"):
        mc.validate(raw)


def test_cifar10_config_lists_salmans_whole_paper_grid_with_its_recipe():
    from methods import salman

    for dataset in ("cifar10", "imagenet"):
        cfg = mc.load(REPO / "config" / f"{dataset}.yaml")
        specs = [mc.resolve_run(cfg, r, 0) for r in cfg["runs"] if cfg["runs"][r]["method"] == "salman"]
        got = sorted(
            tuple(s["hparams"][k] for k in ("attack", "steps", "num_noise", "epsilon", "sigma")) for s in specs
        )
        want = sorted(
            tuple(g[k] for k in ("attack", "steps", "num_noise", "epsilon", "sigma"))
            for g in salman.paper_grid(dataset)
        )
        assert got == want
        paper = salman.PAPER[dataset]
        for spec in specs:
            assert (spec["model"]["arch"], spec["model"]["normalization"]) == (paper["arch"], "center")
            assert spec["hparams"]["warmup"] == paper["hparams"]["warmup"]
            for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "step_size", "gamma"):
                if key in paper:
                    assert spec["train"][key] == paper[key], key
    assert "salman-pgd10-m8-eps1.00-0.25" in mc.load(REPO / "config" / "cifar10.yaml")["runs"]  # MACER's Salman-0.25


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_paper_configs_carry_macers_settings(dataset):
    from methods import macer

    paper = macer.PAPER[dataset]
    cfg = mc.load(REPO / "config" / f"{dataset}.yaml")
    specs = {r: mc.resolve_run(cfg, r, 0) for r in cfg["runs"] if cfg["runs"][r]["method"] == "macer"}
    assert sorted(s["hparams"]["sigma"] for s in specs.values()) == [0.25, 0.5, 1.0]
    for spec in specs.values():
        assert spec["model"]["arch"] == paper["arch"]
        if "normalization" in paper:
            assert spec["model"]["normalization"] == paper["normalization"]
        assert {k: spec["hparams"][k] for k in ("k", "gamma", "beta")} == {
            k: paper["hparams"][k] for k in ("k", "gamma", "beta")
        }
        train = spec["train"]
        assert (train["epochs"], train["lr"], train["schedule"], train["milestones"], train["gamma"]) == (
            paper["epochs"],
            paper["lr"],
            "multistep",
            paper["milestones"],
            paper["gamma_lr"],
        )
        for key in ("batch_size", "momentum", "weight_decay"):
            if key in paper:
                assert train[key] == paper[key], key
        if spec["hparams"]["sigma"] in paper.get("lam_by_sigma", {}):
            assert spec["hparams"]["lam"] == paper["lam_by_sigma"][spec["hparams"]["sigma"]]
    if dataset == "cifar10":
        assert {s["certify"]["start"] for s in specs.values()} == {500}  # MACER's test images 500–999
    assert all(run in mc.notes_of(cfg) for run, s in specs.items() if s["hparams"]["sigma"] == 1.0)


def test_paper_configs_certify_feng_runs_with_every_certifier():
    for dataset in ("cifar10", "imagenet"):
        cfg = mc.load(REPO / "config" / f"{dataset}.yaml")
        fengs = [mc.resolve_run(cfg, r, 0) for r in cfg["runs"] if cfg["runs"][r]["method"] == "feng"]
        assert fengs and all(s["certify"]["certifiers"] == ["cohen", "t-certify", "t-certify-grid"] for s in fengs)


def test_run_resources_override_the_experiments():
    raw = {
        "resources": {"train": {"runtime": 60, "threads": 2}},
        "runs": {"long": {"method": "macer", "resources": {"train": {"runtime": 600}}}, "short": {"method": "cohen"}},
    }
    cfg = mc.validate(raw)
    assert mc.run_resource(cfg, "long", "train", "runtime") == 600
    assert mc.run_resource(cfg, "long", "train", "threads") == 2
    assert mc.run_resource(cfg, "short", "train", "runtime") == 60
    assert mc.run_resource(cfg, None, "report", "runtime") == 60  # the schema default
    assert "resources" not in mc.resolve_run(cfg, "long", 0)  # requests never change what a job computes
    with pytest.raises(mc.ConfigError, match="runs.long.resources.train"):
        mc.validate({"runs": {"long": {"method": "cohen", "resources": {"train": {"runtime": 0}}}}})


@pytest.mark.parametrize(
    "config_name, runs",
    [
        ("mnist", {"linf-dist-v2-0.1": "v2-mnist-0.1", "linf-dist-v2-0.3": "v2-mnist-0.3"}),
        (
            "cifar10",
            {
                "linf-dist-v2-eps2": "v2-cifar10-2/255",
                "linf-dist-v2-eps8": "v2-cifar10-8/255",
                "linf-dist-v2-eps16": "v2-cifar10-16/255",
            },
        ),
    ],
)
def test_paper_configs_carry_the_linf_dist_v2_settings(config_name, runs):
    """Each ℓ∞-dist run is exactly its METHODS.md §6 setting (as transcribed in linf_dist.PAPER), with v2's optimizer,
    schedule, batch and crop."""
    from methods import linf_dist

    cfg = mc.load(REPO / "config" / f"{config_name}.yaml")
    for run, setting in runs.items():
        spec = mc.resolve_run(cfg, run, 0)
        assert linf_dist.Hparams(**spec["hparams"]) == linf_dist.paper_hparams(setting), run
        paper, train = linf_dist.PAPER[setting], spec["train"]
        assert (
            train["optimizer"],
            train["lr"],
            tuple(train["adam_betas"]),
            train["adam_eps"],
            train["batch_size"],
            train["weight_decay"],
            train["schedule"],
            train["epochs"],
        ) == (
            paper["optimizer"],
            paper["lr"],
            paper["betas"],
            paper["adam_eps"],
            paper["batch_size"],
            paper["weight_decay"],
            "cosine",
            paper["hparams"]["epochs"],
        )
        assert train["augment"]["padding_mode"] == "edge"
        assert "linf-margin" in spec["certify"]["certifiers"]


def test_cifar10_config_carries_backward_smoothings_settings():
    from methods import backward_smoothing

    paper = backward_smoothing.PAPER["cifar10"]
    cfg = mc.load(REPO / "config" / "cifar10.yaml")
    specs = [mc.resolve_run(cfg, r, 0) for r in cfg["runs"] if cfg["runs"][r]["method"] == "backward_smoothing"]
    assert sorted(s["model"]["arch"] for s in specs) == sorted(paper["archs"])
    for spec in specs:
        assert spec["hparams"] == paper["hparams"]
        assert {k: spec["train"][k] for k in paper["train"]} == paper["train"]
        assert (tuple(spec["model"]["mean"]), tuple(spec["model"]["std"])) == (
            paper["normalization"]["mean"],
            paper["normalization"]["std"],
        )
        assert {"pgd20", "pgd100", "autoattack"} <= set(spec["certify"]["certifiers"])
        pgd20 = paper["evaluation"]["pgd20"]  # the "best" epoch: PGD-20 on the first 2,560 test images
        assert spec["train"]["select_best"] == dict(
            eps=pgd20["eps"],
            step_size=pgd20["step_size"],
            steps=pgd20["steps"],
            loss=pgd20["loss"],
            images=paper["evaluation"]["best_checkpoint_images"],
        )
        assert pgd20["random_start"] is False  # selection_accuracy never starts at random
        assert 8 / 255 in spec["certify"]["eps_grid"] and 0.031 in spec["certify"]["eps_grid"]


def test_cifar10_config_carries_the_linf_dist_v1_settings():
    from methods import linf_dist

    cfg = mc.load(REPO / "config" / "cifar10.yaml")
    spec = mc.resolve_run(cfg, "linf-dist-v1-eps8", 0)
    paper = linf_dist.PAPER["v1-cifar10-8/255"]
    assert linf_dist.Hparams(**spec["hparams"]) == linf_dist.paper_hparams("v1-cifar10-8/255")
    train = spec["train"]
    assert (train["lr"], train["batch_size"], train["epochs"], train["schedule"], train["cosine_start"]) == (
        paper["lr"],
        paper["batch_size"],
        800,
        "cosine",
        100,
    )
    assert train["weight_decay"] == 0.0 and spec["hparams"]["row_weight_decay"] == paper["weight_decay"]
    assert train["augment"] is True  # RandomCrop(32, pad 4, zeros) + flip: the CIFAR-10 standard


@pytest.mark.parametrize(
    "certify, words",
    [
        ({"certifiers": ["cohen", "nope"]}, "runs.x.certify.certifiers.1: unknown certifier 'nope'"),
        (
            {"certifiers": ["linf-margin"]},
            "runs.x.certify.certifiers.0: linf-margin evaluates linf-certified models; cohen is l2-smoothing",
        ),
        ({"certifiers": ["pgd20"]}, "runs.x.certify.certifiers.0: pgd20 evaluates"),
    ],
)
def test_a_certifier_that_cannot_serve_the_run_is_refused_before_any_job(certify, words):
    with pytest.raises(mc.ConfigError) as err:
        mc.validate({"runs": {"x": {"method": "cohen", "certify": certify}}})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_attack_eps_resolves_per_evaluator_with_the_runs_own_radius_as_default():
    run = {"method": "backward_smoothing", "hparams": {"epsilon": 0.031},
           "certify": {"certifiers": ["pgd20-at-eps", "autoattack-at-eps", "pgd20"]}}  # fmt: skip
    spec = mc.resolve_run(mc.validate({"runs": {"x": run}}), "x", 0)
    assert spec["certify"]["attack_eps"] == {"pgd20-at-eps": 0.031, "autoattack-at-eps": 0.031}
    run["certify"]["attack_eps"] = {"autoattack-at-eps": "8/255"}
    spec = mc.resolve_run(mc.validate({"runs": {"x": run}}), "x", 0)
    assert spec["certify"]["attack_eps"] == {"pgd20-at-eps": 0.031, "autoattack-at-eps": 8 / 255}
    run["certify"]["attack_eps"] = {"pgd100-at-eps": 0.1}
    with pytest.raises(mc.ConfigError, match="attack_eps.pgd100-at-eps: not one of this run's"):
        mc.validate({"runs": {"x": run}})
    run["certify"]["attack_eps"] = "8/0"
    with pytest.raises(mc.ConfigError, match="division by zero"):
        mc.validate({"runs": {"x": run}})


def test_model_width_reaches_small_cnn_runs_and_not_a_method_with_its_own_architecture():
    """An experiment-wide `model.width` (the default config's) is part of a small-CNN run's spec, and is dropped from
    an ℓ∞-dist run's, which builds its own network (as it ignores `model.arch`)."""
    cfg = mc.validate(with_(model__width=8, runs={"c": {"method": "cohen"}, "l": {"method": "linf_dist"}}))
    assert mc.resolve_run(cfg, "c", 0)["model"]["width"] == 8
    assert mc.resolve_run(cfg, "l", 0)["model"]["width"] is None
