"""The training loop every method shares: the method supplies the loss, the loop owns everything else.

Seeding, progress bar, per-epoch log, atomic per-epoch checkpoint and resume live here once.
Resume is exact: all randomness of epoch e (shuffling, augmentation, noise) is re-seeded from (seed, e), and the
checkpoint carries model, optimizer and scheduler state, so a run killed after epoch e and restarted ends with the
same weights as an uninterrupted run (bit-identical on CPU).

Layout of a run directory:
    model.pt          final model, the last epoch's weights (declared Snakemake output)
    model_best.pt     where `train.select_best` is set: the epoch with the highest selection accuracy (declared)
    train_log.tsv     one row per finished epoch (declared output; rewritten from the checkpoint on resume)
    run.json          resolved spec + provenance (git commit, versions, device)
    state/checkpoint.pt   resume state; not a declared output, so Snakemake never deletes it after a kill
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import save_model
from ..core import data, models
from ..core.errors import InputError
from ..core.io import (
    RunLock,
    atomic_write_text,
    device_name,
    provenance,
    select_device,
    sha256_file,
    spec_json,
    synchronize,
    write_json,
)
from ..registry import get_method
from . import device_data, distributed
from . import fast as fast_train
from . import state as resume_state
from .build import build_scheduler, build_training
from .early_stop import EarlyStop
from .health import check_health, health_summary, new_health
from .selection import selection_accuracy, selection_description, selection_subset

LOG_COLUMNS = (
    "epoch",
    "train_seconds",
    "loss",
    "accuracy",
    "lr",
    "eval_seconds",
    "test_loss",
    "test_accuracy",
    "select_seconds",
    "select_accuracy",
    "path",
    "dtype",
    "compiled",
)
STATE_FILE = Path("state") / "checkpoint.pt"


def epoch_seed(seed: int, epoch: int) -> int:
    """All randomness of one epoch derives from this, so resuming at epoch e replays e's draws exactly."""
    return seed * 1_000_003 + epoch


#: train settings that say when to checkpoint, not what is trained: changing them keeps a resume state valid.
CHECKPOINT_KEYS = ("checkpoint_every_steps", "checkpoint_every_minutes")
#: Signals after which training checkpoints and exits: SLURM's warning before a time limit or preemption
#: (--signal=USR1@<seconds>), and the TERM it sends before killing a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def training_fingerprint(spec: dict) -> str:
    """The part of a spec that determines the trained weights; a resume state from another spec is stale."""
    kept = {k: v for k, v in spec.items() if k not in ("certify", "device", "data_root", "download")}
    kept["train"] = {k: v for k, v in spec["train"].items() if k not in CHECKPOINT_KEYS}
    return spec_json(kept)


class StopRequest:
    """Turns SIGTERM / SIGUSR1 into a flag the loop checks after each batch: the batch finishes, the state is saved,
    and the process exits with 128 + signal (a failed job, so Snakemake/SLURM rerun it, and it resumes)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        print(f"received {signal.Signals(signum).name}: checkpointing after this batch, then exiting", flush=True)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _rng_state(dev) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict, dev) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), dev)


def _log_tsv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@torch.no_grad()
def evaluate(method, model, loader, hp, device) -> tuple[float, float]:
    """The method's objective on the test set in eval mode (for Cohen: noisy test loss and accuracy)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        r = method.objective(model, x, y, method.draw(x, hp), hp)
        loss_sum += float(r.loss) * r.count
        correct += int(r.correct)
        count += r.count
    return loss_sum / count, correct / count


def train(
    spec: dict,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> Path:
    """Train the run described by `spec` into `out_dir`, resuming from out_dir/state if present. Returns model.pt.

    The state is saved after every epoch, every `train.checkpoint_every_steps` batches and
    `train.checkpoint_every_minutes` minutes within one, and when SIGTERM or SIGUSR1 arrives (then the process exits
    with 128 + signal). A mid-epoch state holds the batch position, the running sums and the global RNG state; on
    resume the epoch's loader is rebuilt from its seed, the batches already done are skipped and the RNG restored,
    so the run continues exactly where it stopped (bit-identical on CPU).

    `train.fast` trains on the fast path (methods/train/fast.py; run.json's `train_path` and the log's path, dtype
    and compiled columns say which path trained the run); train_seconds is timed the same way on both paths: from
    the first batch fetch to the last step, with the device synchronised at both ends."""
    with StopRequest() as stop:
        dev = select_device(device if device != "auto" else spec.get("device", "auto"))
        ctx, dev = distributed.setup(dev)
        try:
            train_cfg = spec["train"]
            lock = RunLock(Path(out_dir), f"run directory {out_dir}") if ctx.main else contextlib.nullcontext()
            with lock, fast_train.backend_flags(train_cfg.get("fast", False), dev, train_cfg.get("tf32", False)):
                return _train(spec, out_dir, dev, progress and ctx.main, on_epoch_end, stop, ctx)
        finally:
            distributed.teardown(ctx)


#: Each rank of a multi-process run draws its own noise: rank r's epoch seed is offset by r times this.
RANK_SEED_STRIDE = 1_000_000_007


def _train(spec, out_dir, dev, progress, on_epoch_end, stop: StopRequest, ctx: distributed.Context) -> Path:
    out_dir = Path(out_dir)
    method = get_method(spec["method"])
    hp = method.Hparams(**spec["hparams"])
    cfg, seed = spec["train"], spec["seed"]
    epochs = cfg["epochs"]

    torch.manual_seed(seed)
    training = build_training(spec, dev)
    model, optimizer, optimizer_impl, path, step = (
        training.model,
        training.optimizer,
        training.optimizer_impl,
        training.path,
        training.step,
    )
    if path.device_data:  # every training image on the device once; crop/flip there
        train_set = device_data.DeviceTrainSet.load(
            spec["dataset"], spec["data_root"], spec["download"], cfg["augment"], dev, channels_last=path.channels_last
        )
    else:
        train_set = data.load(spec["dataset"], "train", spec["data_root"], spec["download"], augment=cfg["augment"])
    # per epoch (after it) or per mini-batch (train.schedule_step), over this dataset's batches
    scheduler = build_scheduler(optimizer, cfg, math.ceil(len(train_set) / cfg["batch_size"]))
    per_iteration = cfg.get("schedule_step", "epoch") == "iteration"
    # the fast path's forward (channels_last, autocast, compiled), then DDP where torchrun started several processes
    step_model, hook = distributed.wrap(training.step_model, ctx, dev)

    state_path = out_dir / STATE_FILE
    rows: list[dict] = []
    select = cfg.get("select_best")
    best: dict | None = None  # {"epoch", "accuracy", "model"}: the selected epoch so far (part of the resume state)
    partial: dict | None = None  # a mid-epoch position to continue from
    fingerprint = training_fingerprint(spec)
    num_classes = data.info(spec["dataset"]).num_classes
    health = new_health()
    threads = torch.get_num_threads() if dev.type == "cpu" else None  # on the CPU, part of what is trained
    state = resume_state.load(state_path, dev, move_aside=ctx.main)
    if state is not None:
        if state["fingerprint"] == fingerprint and state.get("threads", threads) != threads:
            raise InputError(
                f"{state_path} was written by a process with {state['threads']} CPU threads and this one has "
                f"{threads}: on the CPU the thread count changes the trained model; rerun with --threads "
                f"{state['threads']} (or delete {state_path.parent} to start over)"
            )
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            rows = list(state["log"])
            health = state.get("health") or new_health()
            best = state.get("best")
            partial = state.get("partial")
            where = f" + {partial['batches_done']} batches" if partial else ""
            if ctx.main:
                print(f"resuming {spec['run']} seed {seed} after epoch {len(rows)}/{epochs}{where}", flush=True)
        elif ctx.main:
            stale = state_path.with_suffix(".stale.pt")
            state_path.replace(stale)
            state_path.with_name(resume_state.PREVIOUS).unlink(missing_ok=True)
            print(
                f"the resume state in {state_path} is from another spec; moved it to {stale} and starting over",
                flush=True,
            )

    # early stop (Fast AT; methods/train/early_stop.py): None unless the run's hparams ask for it
    early = EarlyStop.for_run(method, hp, lambda *counts: distributed.all_sum(ctx, *map(torch.tensor, counts)))
    if early is not None and state is not None and state["fingerprint"] == fingerprint:
        early.load_state_dict(state.get("early_stop"))
    if path.fast and ctx.main:
        print(f"{spec['run']} seed {seed}: {path.summary(optimizer_impl)}", flush=True)
    test_loader = None
    if cfg["eval_each_epoch"]:
        test_loader = DataLoader(
            data.load(spec["dataset"], "test", spec["data_root"], spec["download"]),
            batch_size=cfg["batch_size"],
            num_workers=cfg["num_workers"],
        )
    select_loader = None
    if select:
        select_loader = DataLoader(
            selection_subset(spec["dataset"], select, spec),
            batch_size=cfg["batch_size"],
            num_workers=cfg["num_workers"],
        )

    def write_run_json(**final) -> dict:
        """run.json; rewritten after an epoch in which torch.compile fell back to eager (train_path says so), and at
        the end with the sha256 of every model file (`models`) and the run's health."""
        compiled = fast_train.compile_record(training.step_model, path)
        write_json(
            out_dir / "run.json",
            {
                "spec": spec,
                "provenance": provenance(dev),
                "processes": ctx.world,
                "threads": threads,
                "train_path": {**path.record(optimizer_impl), **compiled, "tf32": spec["train"].get("tf32", False)},
                **final,
            },
        )
        return compiled

    recorded = write_run_json() if ctx.main else None
    distributed.barrier(ctx)  # nobody starts before a stale state was moved aside

    def save_state(mid_epoch: dict | None) -> None:
        """The resume state (rank 0 writes it, every rank waits): after an epoch, or mid-epoch with its position."""
        if ctx.main:
            resume_state.save(
                {
                    "fingerprint": fingerprint,
                    "threads": threads,
                    "health": health,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "log": rows,
                    "best": best,
                    "partial": mid_epoch,
                    "early_stop": early.state_dict() if early is not None else None,
                },
                state_path,
            )
        distributed.barrier(ctx)

    for epoch in range(len(rows), epochs):
        if early is not None and early.stopped:  # early stop: the previous epoch's weights are the model
            break
        torch.manual_seed(epoch_seed(seed, epoch) + ctx.rank * RANK_SEED_STRIDE)
        order = torch.Generator().manual_seed(epoch_seed(seed, epoch))  # the same batch order on every rank
        global_sizes = None
        if path.device_data:  # the same index order and batches as the DataLoader below, without the images
            loader, global_sizes = train_set.index_loader(cfg["batch_size"], order, ctx)
        elif ctx.active:
            sharded = distributed.ShardedBatches(
                torch.utils.data.RandomSampler(train_set, generator=order), cfg["batch_size"], ctx
            )
            global_sizes = sharded.global_sizes()
            loader = DataLoader(
                train_set,
                batch_sampler=sharded,
                num_workers=cfg["num_workers"],
                generator=order,
                pin_memory=dev.type == "cuda",
            )  # the generator, as below: same draws, same order
        else:
            loader = DataLoader(
                train_set,
                batch_size=cfg["batch_size"],
                shuffle=True,
                num_workers=cfg["num_workers"],
                generator=order,
                pin_memory=dev.type == "cuda",
            )
        lr = optimizer.param_groups[0]["lr"]
        step_model.train()
        batches, start, seconds_before = len(loader), 0, 0.0
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        count = 0
        batch_iter = iter(loader)
        if partial is not None and partial["epoch"] == epoch:
            mine = partial["ranks"][ctx.rank]
            start, seconds_before, count = partial["batches_done"], partial["train_seconds"], mine["count"]
            loss_sum, correct = mine["loss_sum"].to(dev), mine["correct"].to(dev)
            # replay the epoch's order (the DataLoader path: and its augmentation draws) up to where it stopped
            for _ in range(start):
                next(batch_iter)
            _set_rng_state(mine["rng"], dev)
        partial = None
        synchronize(dev)
        t0 = last_save = time.perf_counter()
        bar = tqdm(
            total=batches,
            initial=start,
            desc=f"{spec['run']} seed{seed} epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not progress,
            file=sys.stderr,
        )
        for i in range(start, batches):
            if path.device_data:
                x, y = train_set.batch(next(batch_iter))
            else:
                x, y = next(batch_iter)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if hook is not None:  # this rank's share of the batch mean
                hook.weight = len(y) / global_sizes[i]
            if early is not None and i == 0:  # early stop: its check attacks the epoch's first batch
                early.capture(x, y)
            result = step(step_model, optimizer, x, y, hp, epoch + i / batches)
            if per_iteration:
                scheduler.step()
            loss_sum += result.loss.detach() * result.count
            correct += result.correct
            count += result.count
            bar.update(1)
            done = i + 1
            every_steps, every_minutes = cfg["checkpoint_every_steps"], cfg["checkpoint_every_minutes"]
            due = bool(every_steps and done % every_steps == 0) or bool(
                every_minutes and time.perf_counter() - last_save >= 60 * every_minutes
            )
            stopping, due = distributed.any_rank(ctx, stop.signum is not None, due)  # all ranks act together
            if done < batches and (due or stopping):
                synchronize(dev)
                ranks = distributed.gather(
                    ctx,
                    {
                        "loss_sum": loss_sum.detach().cpu(),
                        "correct": correct.cpu(),
                        "count": count,
                        "rng": _rng_state(dev),
                    },
                )
                mid = {
                    "epoch": epoch,
                    "batches_done": done,
                    "ranks": ranks,
                    "train_seconds": seconds_before + time.perf_counter() - t0,
                }
                save_state(mid)
                last_save = time.perf_counter()
                if stopping:
                    bar.close()
                    signum = stop.signum or signal.SIGTERM
                    if ctx.main:
                        print(
                            f"{spec['run']} seed {seed}: saved the state at epoch {epoch + 1}, batch "
                            f"{done}/{batches}; exiting on {signal.Signals(signum).name} (rerun to resume)",
                            flush=True,
                        )
                    raise SystemExit(128 + signum)
        bar.close()
        synchronize(dev)
        train_seconds = seconds_before + time.perf_counter() - t0
        if not per_iteration:
            scheduler.step()
        loss_sum, correct, count = distributed.all_sum(ctx, loss_sum, correct, torch.tensor(count, device=dev))
        loss, accuracy = float(loss_sum) / float(count), float(correct) / float(count)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{spec['run']} seed {seed}: training loss is {loss} in epoch {epoch + 1}")
        row = {
            "epoch": epoch + 1,
            "train_seconds": train_seconds,
            "loss": loss,
            "accuracy": accuracy,
            "lr": lr,
            "eval_seconds": "",
            "test_loss": "",
            "test_accuracy": "",
            "select_seconds": "",
            "select_accuracy": "",
            **path.log_fields(),
            "compiled": fast_train.compile_record(training.step_model, path)["compiled"],
        }
        if early is not None and early.after_epoch(model, epoch + 1) and ctx.main:  # early stop (Fast AT)
            print(f"{spec['run']} seed {seed}: early stop after epoch {epoch + 1} (check accuracy "
                  f"{early.accuracies[-1]:.4f} after {early.previous:.4f}): epoch {epoch}'s weights kept",
                  flush=True)  # fmt: skip
        if test_loader is not None and ctx.main:
            t1 = time.perf_counter()
            row["test_loss"], row["test_accuracy"] = evaluate(method, model, test_loader, hp, dev)
            synchronize(dev)
            row["eval_seconds"] = time.perf_counter() - t1
        if select_loader is not None and ctx.main:
            t1 = time.perf_counter()
            row["select_accuracy"] = selection_accuracy(model, select_loader, select, dev)
            synchronize(dev)
            row["select_seconds"] = time.perf_counter() - t1
            if best is None or row["select_accuracy"] > best["accuracy"]:  # ties keep the earlier epoch
                best = {
                    "epoch": epoch + 1,
                    "accuracy": row["select_accuracy"],
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
        rows.append(row)
        warning = check_health(health, rows, num_classes)
        if warning and ctx.main:
            print(f"{spec['run']} seed {seed}: WARNING: {warning}", flush=True)
        if ctx.main and fast_train.compile_record(training.step_model, path) != recorded:
            recorded = write_run_json()
        save_state(None)
        if ctx.main:
            atomic_write_text(out_dir / "train_log.tsv", _log_tsv(rows))
        if ctx.main:
            print(
                f"{spec['run']} seed {seed} epoch {epoch + 1}/{epochs}: loss {loss:.4f} acc {accuracy:.4f} "
                f"lr {lr:.4g} {train_seconds:.2f}s"
                + (f" test acc {row['test_accuracy']:.4f}" if test_loader else "")
                + (f" select acc {row['select_accuracy']:.4f} (best: epoch {best['epoch']})" if select else ""),
                flush=True,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
        (stopping,) = distributed.any_rank(ctx, stop.signum is not None)
        if stopping and epoch + 1 < epochs:
            signum = stop.signum or signal.SIGTERM
            if ctx.main:
                print(
                    f"{spec['run']} seed {seed}: stopped after epoch {epoch + 1} on "
                    f"{signal.Signals(signum).name} (rerun to resume)",
                    flush=True,
                )
            raise SystemExit(128 + signum)

    if not ctx.main:  # rank 0 writes the model files
        return out_dir / "model.pt"
    atomic_write_text(out_dir / "train_log.tsv", _log_tsv(rows))
    info = {
        "method": spec["method"],
        "dataset": spec["dataset"],
        "num_classes": data.info(spec["dataset"]).num_classes,
        "hparams": spec["hparams"],
        "epochs_done": len(rows),
        "checkpoint": "last",
        **models.file_info(spec["model"], spec["dataset"], getattr(method, "ARCH", None)),
        "threat_model": spec["threat_model"],
        "run": spec["run"],
        "seed": seed,
        "device": device_name(dev),
        "train_seconds": sum(float(r["train_seconds"]) for r in rows),
        "health": health_summary(health, len(rows)),
        "threads": threads,
        **({"early_stop": early.record()} if early is not None else {}),  # early stop: which epoch's weights
    }
    if info["health"]:
        print(f"{spec['run']} seed {seed}: WARNING: {info['health']}", flush=True)
    save_model(model, info, out_dir / "model.pt")
    files = {"model.pt": sha256_file(out_dir / "model.pt")}
    if select:
        last = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best["model"])
        save_model(
            model,
            {
                **info,
                "checkpoint": "best",
                "best_epoch": best["epoch"],
                "best_select_accuracy": best["accuracy"],
                "selected_by": selection_description(select),
            },
            out_dir / "model_best.pt",
        )
        model.load_state_dict(last)
        files["model_best.pt"] = sha256_file(out_dir / "model_best.pt")
        print(
            f"{spec['run']} seed {seed}: best epoch {best['epoch']} (selection accuracy {best['accuracy']:.4f}) "
            f"-> model_best.pt; last epoch -> model.pt",
            flush=True,
        )
    write_run_json(models=files, health=health_summary(health, len(rows)))
    return out_dir / "model.pt"
