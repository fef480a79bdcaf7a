"""Data-parallel training: batch sharding, and 2 gloo processes training the same model as 1 process."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from methods import config as mc
from methods.distributed import Context, ShardedBatches

from conftest import tiny_config


def test_each_global_batch_is_cut_into_contiguous_slices_in_the_same_order():
    order = list(range(10))
    slices = [list(ShardedBatches(order, 4, Context(rank, 3))) for rank in range(3)]
    # global batches [0..3], [4..7], [8, 9]: the last one (2 < 3 processes) is skipped by every rank
    assert slices == [[[0], [4]], [[1], [5]], [[2, 3], [6, 7]]]
    assert ShardedBatches(order, 4, Context(0, 3)).global_sizes() == [4, 4]
    assert ShardedBatches(order, 4, Context(0, 2)).global_sizes() == [4, 4, 2]
    assert [b for r in range(2) for b in ShardedBatches(order, 4, Context(r, 2))] == [
        [0, 1], [4, 5], [8], [2, 3], [6, 7], [9]]


def _spec():
    """Deterministic objective (backward smoothing with γ = 0 and no TRADES step: CE through the DDP-wrapped model
    plus the attack's frozen forward), a BatchNorm-free model, and 1297 digits in batches of 64: the last batch of
    17 splits 9 / 8, so the weighted gradient average is exercised."""
    raw = tiny_config(epochs=2, batch_size=64, lr=0.05, schedule="constant")
    raw["runs"] = {"bs": {"method": "backward_smoothing",
                          "hparams": {"epsilon": 0.1, "step_size": 0.1, "gamma": 0.0, "steps": 0}}}
    return mc.resolve_run(mc.validate(raw), "bs", 0)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = ["-m", "methods", "train", "--spec", mc.spec_json(_spec()), "--device", "cpu", "--threads", "1",
            "--no-progress", "--out"]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *args, str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    a = pd.read_csv(tmp_path / "one" / "train_log.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "two" / "train_log.tsv", sep="\t")
    pd.testing.assert_series_equal(a["loss"], b["loss"], rtol=1e-5)
    pd.testing.assert_series_equal(a["accuracy"], b["accuracy"])  # the same images right, epoch by epoch
    wa = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-3)
    assert torch.load(tmp_path / "two" / "model.pt", weights_only=True)["info"]["epochs_done"] == 2


@pytest.mark.slow
def test_multi_noise_smoothadv_takes_the_same_steps_on_every_rank(tmp_path):
    """SmoothAdv with m = 2 steps once per mini-batch; the last batch of 17 digits splits 9 / 8 across 2 ranks, which
    one process would cut into 3 and 2 mini-batches — a rank waiting forever in the next all-reduce. Every rank now
    takes the global batch's count of steps: the run finishes (it hung before) and logs its epoch."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    raw = tiny_config(epochs=1, batch_size=64, lr=0.05, schedule="constant")
    raw["runs"] = {"adv": {"method": "salman", "hparams": {"sigma": 0.25, "attack": "pgd", "steps": 1,
                                                           "num_noise": 2, "epsilon": 0.25, "warmup": 1}}}
    spec = mc.resolve_run(mc.validate(raw), "adv", 0)
    args = ["-m", "methods", "train", "--spec", mc.spec_json(spec), "--device", "cpu", "--threads", "1",
            "--no-progress", "--out", str(tmp_path / "two")]
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        pytest.fail("2-process multi-noise SmoothAdv hung (the ranks took different numbers of optimizer steps)")
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    log = pd.read_csv(tmp_path / "two" / "train_log.tsv", sep="\t")
    assert len(log) == 1 and log["loss"].notna().all()


def test_minibatches_of_one_process_follow_the_paper_and_keep_the_remainder():
    from methods.salman import minibatches

    x, y = torch.arange(17.0), torch.arange(17)
    pieces = minibatches(x, y, 2)
    assert [len(a) for a, _ in pieces] == [8, 8, 1]  # ⌊17/2⌋ = 8, and the remainder image
    assert torch.equal(torch.cat([a for a, _ in pieces]), x)
    assert [len(a) for a, _ in minibatches(x, y, 1)] == [17]


def test_the_train_rule_launches_torchrun_for_several_processes(tmp_path):
    from test_workflow import snakemake

    (tmp_path / "c.yaml").write_text("dataset: digits\nseeds: [0]\nruns:\n"
                                     "  one: {method: cohen, hparams: {sigma: 0.25}}\n"
                                     "  two: {method: cohen, hparams: {sigma: 0.25}, train: {processes: 2}}\n")
    out = snakemake(tmp_path, "-n", "-p", "results/digits/one/seed0/model.pt", "results/digits/two/seed0/model.pt",
                    "--configfile", str(tmp_path / "c.yaml"))
    assert out.returncode == 0, out.stderr[-2000:]
    commands = [line.split("Shell command: ", 1)[-1].strip() for line in out.stdout.splitlines()
                if "-m methods train" in line]
    assert len(commands) == 2
    assert any(c.startswith("torchrun --standalone --nproc_per_node=2 -m methods train") for c in commands)
    assert any(c.startswith("python -m methods train") for c in commands)
