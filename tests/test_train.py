"""The shared training loop: Cohen's objective, logging, atomic checkpoints, exact resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from methods import cohen, load_checkpoint
from methods import config as mc
from methods.train.loop import LOG_COLUMNS, STATE_FILE, train


class Interrupt(Exception):
    pass


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cohen_objective_is_cross_entropy_on_noisy_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 1, 0])
    noise = torch.randn_like(x) * 0.25
    result = cohen.objective(model, x, y, noise, cohen.Hparams(0.25))
    logits = model(x + noise)
    by_hand = -(logits.log_softmax(1)[torch.arange(5), y]).mean()
    assert result.loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert int(result.correct) == int((logits.argmax(1) == y).sum()) and result.count == 5


def test_cohen_draw_is_gaussian_at_sigma():
    torch.manual_seed(0)
    noise = cohen.draw(torch.zeros(2000, 1, 8, 8), cohen.Hparams(0.5))
    assert noise.shape == (2000, 1, 8, 8)
    assert noise.mean().item() == pytest.approx(0.0, abs=0.01)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)


def test_training_writes_model_log_and_provenance(tmp_path, tiny_spec):
    path = train(tiny_spec, tmp_path, device="cpu", progress=False)
    model, info = load_checkpoint(path)
    assert not model.training
    assert info["method"] == "cohen" and info["dataset"] == "digits" and info["num_classes"] == 10
    assert info["hparams"] == {"sigma": 0.25} and info["epochs_done"] == 3
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert tuple(log.columns) == LOG_COLUMNS
    assert list(log["epoch"]) == [1, 2, 3]
    assert list(log["lr"]) == pytest.approx([0.05, 0.05, 0.005])  # step schedule, step_size 2, gamma 0.1
    assert (log["train_seconds"] > 0).all()
    assert (tmp_path / "run.json").exists() and (tmp_path / STATE_FILE).exists()
    assert model(torch.rand(4, 1, 8, 8)).shape == (4, 10)


def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_spec):
    reference = train(tiny_spec, tmp_path / "uninterrupted", device="cpu", progress=False)

    def stop_after_first_epoch(epoch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_spec, tmp_path / "resumed", device="cpu", progress=False, on_epoch_end=stop_after_first_epoch)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert len(pd.read_csv(tmp_path / "resumed" / "train_log.tsv", sep="\t")) == 1
    resumed = train(tiny_spec, tmp_path / "resumed", device="cpu", progress=False)
    _assert_identical(_weights(reference), _weights(resumed))
    a = pd.read_csv(tmp_path / "uninterrupted" / "train_log.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "resumed" / "train_log.tsv", sep="\t")
    pd.testing.assert_series_equal(a["loss"], b["loss"])


def test_a_changed_spec_does_not_resume_stale_state(tmp_path, tiny_spec, capsys):
    def stop(epoch):
        raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_spec, tmp_path, device="cpu", progress=False, on_epoch_end=stop)
    changed = {**tiny_spec, "hparams": {"sigma": 0.5}}
    train(changed, tmp_path, device="cpu", progress=False)
    assert "from another spec" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "train_log.tsv", sep="\t")) == 3
    assert load_checkpoint(tmp_path / "model.pt")[1]["hparams"] == {"sigma": 0.5}


@pytest.mark.parametrize(
    "schedule,extra,expected",
    [
        ("multistep", {"milestones": [1, 2]}, [0.05, 0.005, 0.0005]),
        ("cosine", {}, [0.05, 0.0375, 0.0125]),
        ("constant", {}, [0.05, 0.05, 0.05]),
    ],
)
def test_schedules(tmp_path, schedule, extra, expected):
    spec = mc.resolve_run(tiny_config(schedule=schedule, **extra), "cohen-0.25", seed=0)
    train(spec, tmp_path, device="cpu", progress=False)
    assert list(pd.read_csv(tmp_path / "train_log.tsv", sep="\t")["lr"]) == pytest.approx(expected)


def test_adam_optimizer_trains(tmp_path):
    spec = mc.resolve_run(tiny_config(optimizer="adam", lr=0.003, schedule="constant", epochs=4), "cohen-0.25", 0)
    train(spec, tmp_path, device="cpu", progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]


def test_noisy_training_learns_digits(tmp_path):
    """Not a target, a sanity floor: 3 epochs of Gaussian augmentation at σ = 0.25 beat chance (0.1) by far."""
    spec = mc.resolve_run(tiny_config(epochs=6, batch_size=32, eval_each_epoch=True), "cohen-0.25", 0)
    train(spec, tmp_path, device="cpu", progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["test_accuracy"].iloc[-1] > 0.6
    assert F.softmax(torch.zeros(10), 0)[0] == pytest.approx(0.1)  # chance level, for the reader


def test_bench_train_times_each_methods_own_step():
    """bench-train runs every method's real train_step (SmoothAdv's attack included) and reports ratios."""
    from methods.bench.train_cost import bench, format_rows

    raw = mc.yaml.safe_load((mc.DEFAULT_CONFIG).read_text())
    cfg = mc.validate(raw)
    specs = [mc.resolve_run(cfg, run, 0) for run in ("cohen-0.25", "salman-0.25")]
    rows = bench(specs, "digits", steps=1, warmup=0, device="cpu")
    assert [r["run"] for r in rows] == ["cohen-0.25", "salman-0.25"]
    assert rows[0]["ratio_to_first"] == 1.0 and all(r["sec_per_batch"] > 0 for r in rows)
    assert rows[1]["sec_per_epoch"] == pytest.approx(rows[1]["sec_per_batch"] * 21)  # ⌈1297 / 64⌉ batches
    assert "salman-0.25" in format_rows(rows)


def test_train_steps_see_their_progress_in_epochs(monkeypatch):
    """train_step gets epoch + fraction of the epoch's batches done: per-batch schedules (ℓ∞-dist p) need it."""
    from methods.train import build as train_module

    seen = []
    real = train_module.default_train_step
    monkeypatch.setattr(
        train_module, "default_train_step", lambda method, *a: (seen.append(a[-1]), real(method, *a))[1]
    )
    spec = mc.resolve_run(tiny_config(epochs=2, batch_size=512, eval_each_epoch=False), "cohen-0.25", seed=0)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        train(spec, out, device="cpu", progress=False)
    assert seen == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])  # ⌈1297 / 512⌉ = 3 batches per epoch


def _select_spec(epochs=4):
    """A tiny backward-smoothing digits run that also keeps its best epoch by PGD accuracy on 64 test images."""
    raw = tiny_config(
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        schedule="constant",
        select_best={"eps": 0.1, "step_size": 0.025, "steps": 5, "images": 64},
    )
    raw["runs"] = {"bs": {"method": "backward_smoothing", "hparams": {"epsilon": 0.1, "step_size": 0.1}}}
    return mc.resolve_run(mc.validate(raw), "bs", seed=0)


def test_select_best_keeps_the_epoch_with_the_highest_attack_accuracy(tmp_path):
    from torch.utils.data import DataLoader

    from methods.train.selection import selection_accuracy, selection_subset

    spec = _select_spec()
    train(spec, tmp_path, device="cpu", progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["select_accuracy"].between(0, 1).all() and (log["select_seconds"] > 0).all()
    best_epoch = int(log["epoch"][log["select_accuracy"].idxmax()])  # idxmax: the first maximum, as the ties rule
    best_model, best_info = load_checkpoint(tmp_path / "model_best.pt")
    last_model, last_info = load_checkpoint(tmp_path / "model.pt")
    assert best_info["checkpoint"] == "best" and last_info["checkpoint"] == "last"
    assert best_info["best_epoch"] == best_epoch
    assert "PGD-5" in best_info["selected_by"] and "test images 0-63" in best_info["selected_by"]
    # Re-scoring the saved weights gives the logged accuracy of their epoch: the file holds that epoch's weights.
    select = spec["train"]["select_best"]
    loader = DataLoader(selection_subset("digits", select, spec), batch_size=64)
    assert selection_accuracy(best_model, loader, select, "cpu") == pytest.approx(
        log["select_accuracy"][best_epoch - 1]
    )
    assert selection_accuracy(last_model, loader, select, "cpu") == pytest.approx(log["select_accuracy"].iloc[-1])


def test_select_best_survives_a_resume(tmp_path):
    spec = _select_spec()
    train(spec, tmp_path / "uninterrupted", device="cpu", progress=False)

    def stop_after_second_epoch(epoch):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(spec, tmp_path / "resumed", device="cpu", progress=False, on_epoch_end=stop_after_second_epoch)
    train(spec, tmp_path / "resumed", device="cpu", progress=False)
    for name in ("model.pt", "model_best.pt"):
        _assert_identical(_weights(tmp_path / "uninterrupted" / name), _weights(tmp_path / "resumed" / name))


def test_select_best_refuses_more_images_than_the_test_set(tmp_path):
    spec = _select_spec(epochs=1)
    spec["train"]["select_best"]["images"] = 10_000
    with pytest.raises(ValueError, match="select_best.images = 10000 .* only 500"):
        train(spec, tmp_path, device="cpu", progress=False)


def test_best_is_the_first_epoch_with_the_top_score_not_the_last(tmp_path, monkeypatch):
    """Scripted scores 0.2, 0.6, 0.6, 0.5: model_best.pt must hold epoch 2's weights (ties keep the earlier epoch),
    which a 2-epoch run of the same spec reproduces exactly (constant lr, per-epoch seeding)."""
    import methods.train.loop as mt

    scores = iter([0.2, 0.6, 0.6, 0.5])
    monkeypatch.setattr(mt, "selection_accuracy", lambda *args: next(scores))
    train(_select_spec(epochs=4), tmp_path / "four", device="cpu", progress=False)
    assert load_checkpoint(tmp_path / "four" / "model_best.pt")[1]["best_epoch"] == 2
    monkeypatch.setattr(mt, "selection_accuracy", lambda *args: 0.0)
    train(_select_spec(epochs=2), tmp_path / "two", device="cpu", progress=False)
    _assert_identical(_weights(tmp_path / "four" / "model_best.pt"), _weights(tmp_path / "two" / "model.pt"))
    with pytest.raises(AssertionError):  # and the last epoch's weights are different ones
        _assert_identical(_weights(tmp_path / "four" / "model.pt"), _weights(tmp_path / "two" / "model.pt"))


def _mid_epoch_cmd() -> list[str]:
    spec = mc.resolve_run(tiny_config(epochs=2, batch_size=4, checkpoint_every_steps=5), "cohen-0.25", seed=2)
    return [
        sys.executable,
        "-m",
        "methods",
        "train",
        "--spec",
        mc.spec_json(spec),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--out",
    ]


@pytest.fixture(scope="module")
def uninterrupted_mid_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    subprocess.run(_mid_epoch_cmd() + [str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGUSR1, signal.SIGKILL])
def test_a_run_stopped_mid_epoch_resumes_bit_identical(tmp_path, kill, uninterrupted_mid_epoch_run):
    """SLURM's warning signal (USR1), its TERM before a kill, and a hard KILL, all in the middle of an epoch: the
    rerun continues from the mid-epoch state (batch position, running sums, RNG) and ends with the weights and log
    of an uninterrupted run. TERM/USR1 save the state themselves and exit with 128 + signal."""
    cmd, clean = _mid_epoch_cmd(), uninterrupted_mid_epoch_run

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(cmd + [str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (stopped / STATE_FILE).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, kill)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (-kill if kill == signal.SIGKILL else 128 + kill), out
    assert not (stopped / "model.pt").exists()
    state = torch.load(stopped / STATE_FILE, weights_only=True)
    assert state["partial"] is not None and state["partial"]["batches_done"] > 0  # stopped inside epoch 1
    if kill == signal.SIGKILL:
        assert state["partial"]["batches_done"] % 5 == 0  # the last periodic save
    else:
        assert f"exiting on {kill.name}" in out  # saved by the handler, wherever it was

    resumed = subprocess.run(cmd + [str(stopped)], check=True, capture_output=True, text=True, timeout=300)
    assert "batches" in resumed.stdout.splitlines()[0]  # "resuming ... after epoch 0/2 + N batches"
    _assert_identical(_weights(clean / "model.pt"), _weights(stopped / "model.pt"))
    a = pd.read_csv(clean / "train_log.tsv", sep="\t")
    b = pd.read_csv(stopped / "train_log.tsv", sep="\t")
    pd.testing.assert_series_equal(a["loss"], b["loss"], check_exact=True)
    pd.testing.assert_series_equal(a["accuracy"], b["accuracy"], check_exact=True)


def test_checkpoint_settings_do_not_invalidate_a_resume_state():
    from methods.train.loop import training_fingerprint

    a = mc.resolve_run(tiny_config(), "cohen-0.25", seed=0)
    b = mc.resolve_run(tiny_config(checkpoint_every_steps=7, checkpoint_every_minutes=2.5), "cohen-0.25", seed=0)
    c = mc.resolve_run(tiny_config(lr=0.01), "cohen-0.25", seed=0)
    assert training_fingerprint(a) == training_fingerprint(b) != training_fingerprint(c)


def test_a_schedule_can_step_per_iteration_with_its_epochs_counted_in_batches():
    """The ℓ∞-dist references step their cosine per mini-batch: lr at iteration t is lr·½(1 + cos(πt/T)), T = epochs ×
    batches; with cosine_start the lr holds until that epoch's first batch. Per epoch, the schedule is unchanged."""
    import math

    from methods.train.build import build_scheduler

    def lrs(cfg, batches, steps):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.03)
        scheduler, out = build_scheduler(optimizer, cfg, batches), []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cfg = {"schedule": "cosine", "cosine_start": 0, "epochs": 4, "schedule_step": "iteration"}
    got = lrs(cfg, batches=5, steps=20)
    assert got == pytest.approx([0.03 * 0.5 * (1 + math.cos(math.pi * t / 20)) for t in range(20)])
    v1 = lrs({**cfg, "cosine_start": 2}, batches=5, steps=20)
    assert v1[:10] == [0.03] * 10 and v1[10:] == pytest.approx(
        [0.015 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    )
    per_epoch = lrs({**cfg, "schedule_step": "epoch"}, batches=5, steps=4)
    assert per_epoch == pytest.approx([0.03 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    steps = lrs({"schedule": "multistep", "milestones": [2, 3], "gamma": 0.1, "schedule_step": "iteration"}, 4, 16)
    assert steps == pytest.approx([0.03] * 8 + [0.003] * 4 + [0.0003] * 4)


def test_macers_lr_drops_where_the_reference_steps_its_scheduler():
    """MACER's reference steps MultiStepLR([200, 400]) at the start of each 1-based epoch: 199 epochs at 0.01, 200 at
    0.001, 41 at 0.0001 of 440 — what config/cifar10.yaml's milestones [199, 399] give in this after-epoch loop."""
    from methods.train.build import build_scheduler

    spec = mc.resolve_run(mc.load(Path(__file__).resolve().parents[1] / "config" / "cifar10.yaml"), "macer-0.25", 0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec["train"]["lr"])
    scheduler, per_epoch = build_scheduler(optimizer, spec["train"]), []
    for _ in range(spec["train"]["epochs"]):
        per_epoch.append(round(optimizer.param_groups[0]["lr"], 10))
        optimizer.step()
        scheduler.step()
    assert [per_epoch.count(lr) for lr in (0.01, 0.001, 0.0001)] == [199, 200, 41]
