"""The certify step: per-example TSV format, the papers' subsets, resume after a kill, shards that merge exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from methods.certify.registry import certifier_spec
from methods.certify.smoothing import max_radius
from methods.certify.step import _fingerprint, certify_run, merge_shards, subset_indices
from methods.core.io import sha256_file
from methods.core.tsv import TSV_COLUMNS, read_tsv
from methods.train.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import tiny_config

    from methods import config as mc

    spec = mc.resolve_run(tiny_config(), "cohen-0.25", seed=0)
    path = train(spec, tmp_path_factory.mktemp("run"), device="cpu", progress=False)
    return path, spec


def _without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="time").reset_index(drop=True)


def test_papers_subsets():
    assert subset_indices(10_000, 0, 20, 500) == list(range(0, 10_000, 20))  # Cohen's CIFAR-10 files
    assert subset_indices(10_000, 500, 1, 500) == list(range(500, 1000))  # MACER's test images 500–999
    assert subset_indices(50_000, 0, 100, 500) == list(range(0, 50_000, 100))  # ImageNet, every 100th
    assert subset_indices(10, 3, 4, None) == [3, 7]
    with pytest.raises(ValueError, match="past the end"):
        subset_indices(10, 10, 1, None)


def test_tsv_format_and_sidecar(trained, tmp_path):
    model, spec = trained
    out = certify_run(model, spec, tmp_path / "cohen.tsv", device="cpu", progress=False)
    header = out.read_text().splitlines()[0]
    assert header.split("\t") == list(TSV_COLUMNS)
    frame = read_tsv(out)
    assert list(frame["idx"]) == list(range(0, 500, 25))[:8]
    assert frame["predict"].dtype.kind == "i" and frame["label"].dtype.kind == "i"
    assert set(frame["correct"]) <= {0, 1}
    assert (frame.loc[frame["correct"] == 0, "radius"] == 0).all()  # radius 0 when wrong or abstaining
    assert (frame.loc[frame["predict"] == -1, "correct"] == 0).all()
    assert (frame["correct"] == (frame["predict"] == frame["label"])).all()
    cliff = max_radius(0.25, 200, 0.001)
    assert ((frame["radius"] >= 0) & (frame["radius"] <= cliff + 1e-12)).all()
    assert (frame["time"] > 0).all()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sigma"] == 0.25 and meta["n"] == 200 and meta["n0"] == 20 and meta["alpha"] == 0.001
    assert meta["subset"] == {"start": 0, "skip": 25, "count": 8, "examples": 8}
    assert meta["max_radius"] == pytest.approx(cliff)
    assert not out.with_name("cohen.tsv.partial").exists()


def test_certificates_are_reproducible(trained, tmp_path):
    model, spec = trained
    a = certify_run(model, spec, tmp_path / "a.tsv", device="cpu", progress=False)
    b = certify_run(model, spec, tmp_path / "b.tsv", device="cpu", progress=False)
    pd.testing.assert_frame_equal(_without_time(read_tsv(a)), _without_time(read_tsv(b)))


def _partial(model, spec, lines: list[str], stamp: str | None = None) -> str:
    stamp = stamp or _fingerprint(sha256_file(model), certifier_spec(spec, "cohen"), "cohen", 0, 1)
    return f"# fingerprint {stamp}\n" + "".join(lines)


def test_resume_keeps_finished_rows_and_equals_an_uninterrupted_run(trained, tmp_path):
    model, spec = trained
    full = read_tsv(certify_run(model, spec, tmp_path / "full.tsv", device="cpu", progress=False))
    lines = (tmp_path / "full.tsv").read_text().splitlines(keepends=True)
    out = tmp_path / "resumed.tsv"
    # A kill after three rows, in the middle of writing the fourth.
    (tmp_path / "resumed.tsv.partial").write_text(_partial(model, spec, lines[:4] + [lines[4][:7]]))
    resumed = read_tsv(certify_run(model, spec, out, device="cpu", progress=False))
    pd.testing.assert_frame_equal(_without_time(full), _without_time(resumed))
    assert list(resumed["time"][:3]) == list(full["time"][:3])  # the finished rows were kept, not recomputed


def test_rows_from_other_settings_are_not_resumed(trained, tmp_path, capsys):
    model, spec = trained
    full = read_tsv(certify_run(model, spec, tmp_path / "full.tsv", device="cpu", progress=False))
    header, first, *_ = (tmp_path / "full.tsv").read_text().splitlines(keepends=True)
    forged = first.split("\t")
    forged[3] = "99.0"  # a radius no run at these settings can produce
    other = {**spec, "certify": {**spec["certify"], "n": 400}}
    (tmp_path / "out.tsv.partial").write_text(
        _partial(model, spec, [header, "\t".join(forged)], stamp=_fingerprint(sha256_file(model), other, "cohen", 0, 1))
    )
    resumed = read_tsv(certify_run(model, spec, tmp_path / "out.tsv", device="cpu", progress=False))
    assert "ignoring" in capsys.readouterr().out
    pd.testing.assert_frame_equal(_without_time(full), _without_time(resumed))


def test_three_shards_merge_to_the_unsharded_result(trained, tmp_path):
    model, spec = trained
    whole = read_tsv(certify_run(model, spec, tmp_path / "whole.tsv", device="cpu", progress=False))
    parts = [
        certify_run(model, spec, tmp_path / f"part{i}.tsv", device="cpu", shard=i, shards=3, progress=False)
        for i in range(3)
    ]
    assert sorted(sum((list(read_tsv(p)["idx"]) for p in parts), [])) == list(whole["idx"])
    merged = read_tsv(merge_shards(parts, tmp_path / "merged.tsv"))
    pd.testing.assert_frame_equal(_without_time(whole), _without_time(merged))


def test_read_tsv_rejects_other_formats(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_tsv(bad)


def test_unknown_certifier_is_refused(trained, tmp_path):
    model, spec = trained
    with pytest.raises(ValueError, match="unknown certifier"):
        certify_run(model, spec, tmp_path / "x.tsv", certifier="t-certify-typo", device="cpu")


def test_t_certify_runs_on_the_same_draws_as_certify(trained, tmp_path):
    """Both certifiers seed each example's noise from (seed, idx): they see the same counts, so their predictions
    agree wherever both certify, and the T-CERTIFY sidecar records its split and its own cliff."""
    from scipy.stats import norm

    model, spec = trained
    cohen = read_tsv(certify_run(model, spec, tmp_path / "cohen.tsv", device="cpu", progress=False))
    t_out = certify_run(model, spec, tmp_path / "t-certify.tsv", certifier="t-certify", device="cpu", progress=False)
    t_cert = read_tsv(t_out)
    assert list(t_cert["idx"]) == list(cohen["idx"])
    both = (cohen["predict"] >= 0) & (t_cert["predict"] >= 0)
    assert both.any() and (cohen.loc[both, "predict"] == t_cert.loc[both, "predict"]).all()
    meta = json.loads(t_out.with_suffix(".json").read_text())
    assert meta["certifier"] == "t-certify" and meta["t_certify_split"] == pytest.approx([1 / 3] * 3)
    # all n draws on A: p̲A = (α/3)^(1/n) and p̄B = p̄R = 1 − (α/3)^(1/n), so the cliff is σ·Φ⁻¹((α/3)^(1/n))
    assert meta["max_radius"] == pytest.approx(0.25 * norm.ppf((0.001 / 3) ** (1 / 200)), rel=1e-9)
    assert (t_cert["radius"] <= meta["max_radius"] + 1e-12).all()


def test_paper_style_grid_certifier_writes_its_grid(trained, tmp_path):
    model, spec = trained
    out = certify_run(model, spec, tmp_path / "grid.tsv", certifier="t-certify-grid", device="cpu", progress=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert len(meta["t_certify_grid"]) == 6  # t_certify_grid_size 5 → (5-1)(5-2)/2 splits
    assert all(sum(split) == pytest.approx(1) for split in meta["t_certify_grid"])
    assert len(read_tsv(out)) == 8


# ---------------------------------------------------------------- ℓ∞ evaluators


@pytest.fixture(scope="module")
def linf_trained(tmp_path_factory):
    """A small ℓ∞-dist net on digits, trained through the shared loop and ending at p = ∞."""
    from methods import config as mc

    raw = {
        "dataset": "digits",
        "device": "cpu",
        "train": {
            "epochs": 12,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 0.03,
            "adam_betas": [0.9, 0.99],
            "adam_eps": 1e-10,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "augment": False,
        },
        "certify": {
            "skip": 10,
            "count": 40,
            "batch_size": 16,
            "eps_grid": [0.02, 0.05, 0.1, 0.2],
            "certifiers": ["linf-margin", "linf-interval", "pgd20"],
        },
        "runs": {
            "linf": {
                "method": "linf_dist",
                "hparams": {
                    "depth": 4,
                    "width": 128,
                    "eps_train": 0.15,
                    "eps_test": 0.1,
                    "scalar_std": 0.3765,
                    "lambda0": 0.05,
                    "lambda_end": 0.0005,
                    "p_start": 1,
                    "p_end": 9,
                    "epochs": 12,
                },
            }
        },
    }
    spec = mc.resolve_run(mc.validate(raw), "linf", seed=0)
    return train(spec, tmp_path_factory.mktemp("linf"), device="cpu", progress=False), spec


def test_linf_evaluators_agree_with_each_other(linf_trained, tmp_path):
    """Interval bounds certify at least what the margin certifies; PGD never breaks a point inside its certified
    radius, so PGD accuracy ≥ certified accuracy at every ε of the grid."""
    model, spec = linf_trained
    frames = {
        c: read_tsv(certify_run(model, spec, tmp_path / f"{c}.tsv", certifier=c, device="cpu", progress=False))
        for c in ("linf-margin", "linf-interval", "pgd20")
    }
    margin, interval, pgd = frames["linf-margin"], frames["linf-interval"], frames["pgd20"]
    assert list(margin["idx"]) == list(range(0, 400, 10))
    assert (margin["predict"] == pgd["predict"]).all() and margin["correct"].mean() > 0.3
    for eps in spec["certify"]["eps_grid"]:
        certified = (margin["correct"] == 1) & (margin["radius"] > eps)
        assert (interval.loc[certified, "radius"] >= eps).all()
        assert (pgd.loc[certified, "radius"] >= eps).all()
        assert (pgd["radius"] >= eps).mean() >= certified.mean()
    assert (margin["radius"] > 0).any()
    meta = json.loads((tmp_path / "pgd20.json").read_text())
    assert (meta["norm"], meta["kind"], meta["eps_grid"]) == ("linf", "empirical", [0.02, 0.05, 0.1, 0.2])


def test_smoothing_certifiers_refuse_linf_models(linf_trained, tmp_path):
    model, spec = linf_trained
    with pytest.raises(ValueError, match="needs a l2-smoothing model"):
        certify_run(model, spec, tmp_path / "cohen.tsv", certifier="cohen", device="cpu", progress=False)


def test_a_certify_job_depends_only_on_its_certifiers_settings(trained):
    """Changing n re-runs no ℓ∞ evaluation, changing the ε grid no smoothing certificate, and the list of
    certifiers is part of neither, so adding one re-runs nothing else."""
    _, spec = trained
    changed = {**spec, "certify": {**spec["certify"], "n": 999, "eps_grid": [0.5], "certifiers": ["cohen", "pgd20"]}}
    assert certifier_spec(changed, "pgd20")["certify"] != certifier_spec(spec, "pgd20")["certify"]
    assert certifier_spec(changed, "pgd20")["certify"] == {
        **certifier_spec(spec, "pgd20")["certify"],
        "eps_grid": [0.5],
    }
    assert certifier_spec(changed, "cohen")["certify"] == {**certifier_spec(spec, "cohen")["certify"], "n": 999}
    with pytest.raises(ValueError, match="unknown certifier"):
        certifier_spec(spec, "bogus")


def test_trained_digits_linf_dist_net_is_1_lipschitz(linf_trained):
    """|z(x) − z(x′)|∞ ≤ ‖x − x′‖∞ / std on pairs of digits test images and on nearby perturbations."""
    import torch

    from methods import load_checkpoint
    from methods.core import data

    path, _ = linf_trained
    model, info = load_checkpoint(path)
    assert info["arch"] == "linf_dist_mlp"
    test = data.load("digits", "test")
    x = torch.stack([test[i][0] for i in range(200)])
    g = torch.Generator().manual_seed(0)
    pairs = [
        (x[:100], x[100:]),
        (x[:100], (x[:100] + 0.2 * (2 * torch.rand(x[:100].shape, generator=g) - 1)).clamp(0, 1)),
    ]
    with torch.no_grad():
        for a, b in pairs:
            lhs = (model(a) - model(b)).abs().amax(1)
            rhs = (a - b).flatten(1).abs().amax(1) / model.scalar_std
            assert (lhs <= rhs + 1e-5).all()
            assert (lhs > 0.5 * rhs).any()  # and the bound is not vacuous


def test_linf_dist_papers_pgd_is_reproducible_and_respects_certificates(linf_trained, tmp_path):
    model, spec = linf_trained
    runs = [
        read_tsv(
            certify_run(model, spec, tmp_path / f"{i}.tsv", certifier="linf-dist-pgd", device="cpu", progress=False)
        )
        for i in range(2)
    ]
    pd.testing.assert_frame_equal(_without_time(runs[0]), _without_time(runs[1]))
    margin = read_tsv(
        certify_run(model, spec, tmp_path / "m.tsv", certifier="linf-margin", device="cpu", progress=False)
    )
    for eps in spec["certify"]["eps_grid"]:
        certified = (margin["correct"] == 1) & (margin["radius"] > eps)
        assert (runs[0].loc[certified, "radius"] >= eps).all()


@pytest.mark.parametrize("certifier", ["cohen", "t-certify", "adaptive"])
def test_the_counts_in_the_tsv_re_derive_every_decision(trained, tmp_path, certifier):
    """n0 nA0 n nA (nB) are what the decision was made on: p̲A and the radius follow from them alone, exactly (for
    the adaptive certifier, the counts of the look that certified its radius)."""
    from methods.certify.adaptive import SequentialTest, decision_radii, look_schedule
    from methods.certify.smoothing import ABSTAIN, certify_counts, lower_confidence_bound, t_certify_counts

    model, spec = trained
    spec = {**spec, "certify": {**spec["certify"], "n": 2000, "count": 12, "skip": 20}}
    frame = read_tsv(certify_run(model, spec, tmp_path / f"{certifier}.tsv", certifier, device="cpu", progress=False))
    cfg, sigma = spec["certify"], 0.25
    assert (frame["n0"] == cfg["n0"]).all() and (frame["nA0"] <= frame["n0"]).all()
    assert (frame["nA"] <= frame["n"]).all()
    used = frame["n0"] + frame["n"]  # the adaptive certifier's counts are the deciding look's; it may draw on
    assert ((frame["samples"] == used) if certifier != "adaptive" else (frame["samples"] >= used)).all()
    for row in frame.itertuples(index=False):
        if certifier == "cohen":  # A is "class 0" of a two-class vote: A against everything else
            prediction, radius = certify_counts([row.nA0, 0], [row.nA, row.n - row.nA], sigma, cfg["alpha"])
        elif certifier == "t-certify":  # A, B and the pooled rest are all the bound uses
            prediction, radius = t_certify_counts(
                [row.nA0, 1, 0], [row.nA, row.nB, row.n - row.nA - row.nB], sigma, cfg["alpha"], cfg["t_certify_split"]
            )
        else:  # the anytime bound at the stopping look decides the largest configured radius it reaches
            looks = look_schedule(cfg["n"], cfg["adaptive"]["first_look"], cfg["adaptive"]["growth"])
            test = SequentialTest(sigma, decision_radii(cfg["adaptive"]["radii"]), cfg["n"], cfg["alpha"], tuple(looks))
            p_lower = lower_confidence_bound(row.nA, row.n, test.level)
            certified = [r for r, t in zip(test.radii, test.thresholds) if t <= p_lower][: test.reachable]
            prediction, radius = (0, certified[-1]) if certified else (ABSTAIN, 0.0)
        stored = row.radius if row.correct else None
        assert (prediction == ABSTAIN) == (row.predict == ABSTAIN), row
        if stored is not None and prediction != ABSTAIN:
            assert radius == pytest.approx(stored, rel=1e-12, abs=0), row


def test_files_of_the_older_formats_still_read_and_merge(trained, tmp_path):
    """A TSV written before the count columns (9 columns) or with Cohen's 6 still reads, and shards of the old format
    merge without losing a row (their counts are simply empty)."""
    old = "\t".join(TSV_COLUMNS[:9]) + "\n" + "3\t1\t1\t0.5\t1\t0.1\tfast\tfloat32\t110\n"
    cohen = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n7\t2\t-1\t0.0\t0\t0.2\n"
    (tmp_path / "a.tsv").write_text(old)
    (tmp_path / "b.tsv").write_text(cohen)
    assert read_tsv(tmp_path / "a.tsv")["samples"].tolist() == [110]
    assert read_tsv(tmp_path / "b.tsv")["predict"].tolist() == [-1]
    merged = read_tsv(merge_shards([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "merged.tsv"))
    assert merged["idx"].tolist() == [3, 7] and merged["radius"].tolist() == [0.5, 0.0]
    assert merged["nA"].isna().all()
