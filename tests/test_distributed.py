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
from conftest import tiny_config

from methods import config as mc
from methods.core import collectives
from methods.train.distributed import Context, ShardedBatches


def test_each_global_batch_is_cut_into_contiguous_slices_in_the_same_order():
    order = list(range(10))
    slices = [list(ShardedBatches(order, 4, Context(rank, 3))) for rank in range(3)]
    # global batches [0..3], [4..7], [8, 9]: the last one (2 < 3 processes) is skipped by every rank
    assert slices == [[[0], [4]], [[1], [5]], [[2, 3], [6, 7]]]
    assert ShardedBatches(order, 4, Context(0, 3)).global_sizes() == [4, 4]
    assert ShardedBatches(order, 4, Context(0, 2)).global_sizes() == [4, 4, 2]
    assert [b for r in range(2) for b in ShardedBatches(order, 4, Context(r, 2))] == [
        [0, 1],
        [4, 5],
        [8],
        [2, 3],
        [6, 7],
        [9],
    ]


def _spec():
    """Deterministic objective (backward smoothing with γ = 0 and no TRADES step: CE through the DDP-wrapped model
    plus the attack's frozen forward), a BatchNorm-free model, and 1297 digits in batches of 64: the last batch of
    17 splits 9 / 8, so the weighted gradient average is exercised."""
    raw = tiny_config(epochs=2, batch_size=64, lr=0.05, schedule="constant")
    raw["runs"] = {
        "bs": {"method": "backward_smoothing", "hparams": {"epsilon": 0.1, "step_size": 0.1, "gamma": 0.0, "steps": 0}}
    }
    return mc.resolve_run(mc.validate(raw), "bs", 0)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = [
        "-m",
        "methods",
        "train",
        "--spec",
        mc.spec_json(_spec()),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--out",
    ]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", *args, str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    raw["runs"] = {
        "adv": {
            "method": "salman",
            "hparams": {"sigma": 0.25, "attack": "pgd", "steps": 1, "num_noise": 2, "epsilon": 0.25, "warmup": 1},
        }
    }
    spec = mc.resolve_run(mc.validate(raw), "adv", 0)
    args = [
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
        str(tmp_path / "two"),
    ]
    proc = subprocess.Popen(
        [torchrun, "--standalone", "--nproc_per_node=2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
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
    assert [len(a) for a, _, _ in pieces] == [8, 8, 1]  # ⌊17/2⌋ = 8, and the remainder image
    assert torch.equal(torch.cat([a for a, _, _ in pieces]), x)
    assert {share for _, _, share in pieces} == {1.0}  # no other rank to share a step with
    assert [len(a) for a, _, _ in minibatches(x, y, 1)] == [17]


def _piece_gradients_worker(rank: int, world: int, init_file: str, queue) -> None:
    """One rank of the exact-mean check: 17 rows split 8 / 9 as ShardedBatches cuts them, m = 2 pieces per rank."""
    import torch.distributed as dist

    from methods.salman import minibatches
    from methods.train import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data, target = torch.randn(17, 3), torch.randn(17, 1)
        lo, hi = 17 * rank // world, 17 * (rank + 1) // world
        model, _ = distributed.wrap(torch.nn.Linear(3, 1), Context(rank, world), torch.device("cpu"))
        rows, grads = [], []
        for xs, ys, share in minibatches(data[lo:hi], target[lo:hi], 2):
            model.zero_grad()
            with collectives.gradient_share(model, share):
                torch.nn.functional.mse_loss(model(xs), ys).backward()  # this rank's mean over its piece
            rows.append((len(xs), share))
            grads.append(model.module.weight.grad.tolist())
        # plain lists: a tensor would travel as a shared-memory handle that dies with this process
        queue.put((rank, rows, grads, model.hook_state.weight))
    finally:
        dist.destroy_process_group()


def test_multi_noise_pieces_under_ddp_average_to_the_exact_mean_of_each_step(tmp_path):
    """Two gloo ranks with slices of 8 and 9 images cut into 3 pieces each (3/3/2 and 3/3/3): every piece's reduced
    gradient equals one process's gradient of the mean over the ranks' piece j together, although the pieces
    differ in size; the loader batch's weight is restored afterwards."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_piece_gradients_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        results = dict((r, (rows, grads, weight)) for r, rows, grads, weight in (queue.get(timeout=120) for _ in procs))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    (rows0, grads0, weight0), (rows1, grads1, _) = results[0], results[1]
    assert [n for n, _ in rows0] == [3, 3, 2] and [n for n, _ in rows1] == [3, 3, 3]
    for (n0, s0), (n1, s1) in zip(rows0, rows1):
        assert s0 == pytest.approx(n0 / (n0 + n1)) and s0 + s1 == pytest.approx(1.0)
    assert weight0 == 1.0  # HookState's default, restored after each gradient_share

    torch.manual_seed(0)  # the workers' data and initial weights, drawn in the same order
    data, target = torch.randn(17, 3), torch.randn(17, 1)
    reference = torch.nn.Linear(3, 1)
    bounds0 = torch.tensor([0, 3, 6, 8])  # rank 0 holds rows 0..7, rank 1 rows 8..16
    bounds1 = 8 + torch.tensor([0, 3, 6, 9])
    for j in range(3):
        rows = torch.cat([torch.arange(bounds0[j], bounds0[j + 1]), torch.arange(bounds1[j], bounds1[j + 1])])
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference(data[rows]), target[rows]).backward()
        torch.testing.assert_close(torch.tensor(grads0[j]), reference.weight.grad)
        torch.testing.assert_close(torch.tensor(grads1[j]), reference.weight.grad)


def test_the_train_rule_launches_torchrun_for_several_processes(tmp_path):
    from test_workflow import snakemake

    (tmp_path / "c.yaml").write_text(
        "dataset: digits\nseeds: [0]\nruns:\n"
        "  one: {method: cohen, hparams: {sigma: 0.25}}\n"
        "  two: {method: cohen, hparams: {sigma: 0.25}, train: {processes: 2}}\n"
    )
    out = snakemake(
        tmp_path,
        "-n",
        "-p",
        "results/digits/one/seed0/model.pt",
        "results/digits/two/seed0/model.pt",
        "--configfile",
        str(tmp_path / "c.yaml"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    commands = [
        line.split("Shell command: ", 1)[-1].strip() for line in out.stdout.splitlines() if "-m methods train" in line
    ]
    assert len(commands) == 2
    assert any(c.startswith("torchrun --standalone --nproc_per_node=2 -m methods train") for c in commands)
    assert any(c.startswith("python -m methods train") for c in commands)
