"""Trust the files: what a skeptical user tried, each fault reproduced first, then the fix shown.

Permissions (the umask, not mkstemp's 0600), a checkpoint that belongs to another run, flipped bytes in a model file,
a corrupted resume state, a resume at another CPU thread count, two processes on one output, a run that collapses to a
constant prediction, summaries that refuse inconsistent per-example files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from conftest import tiny_config

from methods import config as mc
from methods.certify.step import certify_run
from methods.checkpoint import load_checkpoint
from methods.core.errors import InputError, LockError
from methods.core.io import RunLock, atomic_write_text
from methods.train import state as resume_state
from methods.train.health import check_health, health_summary, new_health
from methods.train.loop import STATE_FILE, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    spec = mc.resolve_run(tiny_config(epochs=2), "cohen-0.25", seed=0)
    out = tmp_path_factory.mktemp("run")
    train(spec, out, device="cpu", progress=False)
    return out, spec


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_of_a_run_get_the_umasks_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert _mode(tmp_path / "a.txt") == 0o644  # mkstemp alone would leave 0600
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert _mode(tmp_path / "b.txt") == 0o600
    finally:
        os.umask(previous)


def test_a_trained_runs_files_are_group_readable_under_umask_022(tmp_path):
    previous = os.umask(0o022)
    try:
        spec = mc.resolve_run(tiny_config(epochs=1), "cohen-0.25", seed=0)
        train(spec, tmp_path, device="cpu", progress=False)
        certify_run(tmp_path / "model.pt", spec, tmp_path / "certify" / "cohen.tsv", device="cpu", progress=False)
    finally:
        os.umask(previous)
    for name in ("model.pt", "train_log.tsv", "run.json", STATE_FILE, "certify/cohen.tsv", "certify/cohen.json"):
        assert _mode(tmp_path / name) == 0o644, name


def test_run_json_and_the_sidecar_record_the_models_sha256(trained, tmp_path):
    from methods.core.io import sha256_file

    out, spec = trained
    run = json.loads((out / "run.json").read_text())
    assert run["models"] == {"model.pt": sha256_file(out / "model.pt")} and run["threads"] == torch.get_num_threads()
    tsv = certify_run(out / "model.pt", spec, tmp_path / "cohen.tsv", device="cpu", progress=False)
    assert json.loads(tsv.with_suffix(".json").read_text())["model_sha256"] == run["models"]["model.pt"]


def test_a_model_file_with_flipped_bytes_is_refused_naming_it(trained, tmp_path):
    out, _ = trained
    blob = bytearray((out / "model.pt").read_bytes())
    middle = len(blob) // 2  # inside the weights, which are most of the file (torch's zip stores them uncompressed)
    blob[middle : middle + 16] = bytes(b ^ 0xFF for b in blob[middle : middle + 16])
    (tmp_path / "model.pt").write_bytes(bytes(blob))
    flipped, clean = torch.load(tmp_path / "model.pt"), torch.load(out / "model.pt")  # the fault: it loads silently
    assert any(not torch.equal(v, flipped["state_dict"][k]) for k, v in clean["state_dict"].items())
    with pytest.raises(InputError, match=f"{tmp_path / 'model.pt'} is corrupted"):
        load_checkpoint(tmp_path / "model.pt")
    (tmp_path / "truncated.pt").write_bytes((out / "model.pt").read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated.pt is not a readable model file"):
        load_checkpoint(tmp_path / "truncated.pt")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"method": "macer"}, "trained for method 'cohen', not this run's 'macer'"),
        ({"hparams": {"sigma": 0.5}}, "other hyper-parameters than run 'cohen-0.25' (sigma 0.25 vs 0.5)"),
        ({"run": "cohen-0.50"}, "trained for run 'cohen-0.25', not this run's 'cohen-0.50'"),
    ],
)
def test_a_checkpoint_must_belong_to_its_run(trained, tmp_path, change, words):
    """A MACER model copied into cohen-0.25's directory, a σ = 0.5 model certified at σ = 0.25: refused."""
    out, spec = trained
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        certify_run(out / "model.pt", {**spec, **change}, tmp_path / "x.tsv", device="cpu", progress=False)


def test_a_corrupted_resume_state_is_moved_aside_and_training_restarts_from_the_last_good_one(tmp_path, capsys):
    spec = mc.resolve_run(tiny_config(epochs=3), "cohen-0.25", seed=0)
    train(spec, tmp_path / "clean", device="cpu", progress=False)

    class Stop(Exception):
        pass

    def stop_after(epoch):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(spec, tmp_path / "run", device="cpu", progress=False, on_epoch_end=stop_after)
    state = tmp_path / "run" / STATE_FILE
    assert (state.parent / resume_state.PREVIOUS).exists()  # epoch 1's state, kept as the last good one
    data = bytearray(state.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    state.write_bytes(bytes(data))
    train(spec, tmp_path / "run", device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "is corrupted" in out and "resuming cohen-0.25 seed 0 after epoch 1/3" in out
    assert (state.parent / "checkpoint.pt.corrupt").exists()
    clean, resumed = torch.load(tmp_path / "clean" / "model.pt"), torch.load(tmp_path / "run" / "model.pt")
    for key, value in clean["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_resume_at_another_thread_count_is_refused(tmp_path):
    spec = mc.resolve_run(tiny_config(epochs=2), "cohen-0.25", seed=0)

    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop

    before = torch.get_num_threads()
    with pytest.raises(Stop):
        train(spec, tmp_path, device="cpu", progress=False, on_epoch_end=stop)
    torch.set_num_threads(before + 1)
    try:
        with pytest.raises(InputError, match=f"with {before} CPU threads and this one has {before + 1}"):
            train(spec, tmp_path, device="cpu", progress=False)
    finally:
        torch.set_num_threads(before)
    train(spec, tmp_path, device="cpu", progress=False)  # at the same count it resumes


def test_a_second_process_on_the_same_output_stops_with_a_message(tmp_path):
    """flock is per open file description: a second RunLock in this process stands for a second process."""
    with RunLock(tmp_path / "cohen.tsv", "certification x"):
        with pytest.raises(LockError, match=r"certification y is in use by pid \d+"):
            with RunLock(tmp_path / "cohen.tsv", "certification y"):
                pass
    with RunLock(tmp_path / "cohen.tsv", "certification z"):  # released: the next one goes through
        pass


def test_two_certify_processes_on_one_output_do_not_interleave(trained, tmp_path):
    import subprocess
    import sys

    out, spec = trained
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); f.write('pid test'); f.flush();"
         " fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
         str(tmp_path / "cohen.tsv.lock")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match="in use by pid test"):
            certify_run(out / "model.pt", spec, tmp_path / "cohen.tsv", device="cpu", progress=False)
        assert not (tmp_path / "cohen.tsv.partial").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_collapse_to_chance_is_warned_recorded_and_flagged():
    health, rows = new_health(), []
    warnings = []
    for epoch, accuracy in enumerate([0.5, 0.11, 0.1, 0.1, 0.09], start=1):
        rows.append({"epoch": epoch, "loss": 2.3 + epoch * 0.01, "accuracy": accuracy})
        warnings.append(check_health(health, rows, 10))
    assert warnings[:2] == ["", ""] and "epoch 3: training accuracy 0.1000 is at chance" in warnings[2]
    assert health_summary(health, 5) == "collapsed: training accuracy at chance in epochs 3-5, to the end"
    rows.append({"epoch": 6, "loss": 1.0, "accuracy": 0.9})
    check_health(health, rows, 10)
    assert health_summary(health, 6) == "training accuracy at chance in epochs 3-5, then recovered"
    flat = new_health()
    flat_rows = [{"epoch": e, "loss": 0.5, "accuracy": 0.9} for e in range(1, 6)]
    for i in range(1, 6):
        check_health(flat, flat_rows[:i], 10)
    assert health_summary(flat, 5) == "loss flat in epochs 4-5, to the end"


def test_a_collapsed_run_says_so_in_run_json_and_the_model_file(tmp_path, capsys):
    """lr 0 keeps the initial network, which predicts one class: the run must say it did not train."""
    spec = mc.resolve_run(tiny_config(epochs=4, lr=1e-12), "cohen-0.25", seed=0)
    train(spec, tmp_path, device="cpu", progress=False)
    health = json.loads((tmp_path / "run.json").read_text())["health"]
    assert health.startswith("collapsed")
    assert load_checkpoint(tmp_path / "model.pt")[1]["health"] == health
    assert "WARNING: epoch 3: training accuracy" in capsys.readouterr().out


def test_the_state_module_falls_back_to_the_previous_state_and_then_to_nothing(tmp_path):
    path = tmp_path / "state" / "checkpoint.pt"
    path.parent.mkdir()
    resume_state.save({"fingerprint": "a", "x": 1}, path)
    resume_state.save({"fingerprint": "a", "x": 2}, path)
    assert resume_state.load(path, "cpu")["x"] == 2
    path.write_bytes(b"garbage")
    logged = []
    assert resume_state.load(path, "cpu", log=lambda *a, **k: logged.append(a[0]))["x"] == 1
    assert "torch cannot read it" in logged[0] or "sha256 does not match" in logged[0]
    shutil.copy(path.with_name("checkpoint.prev.pt"), path.with_name("checkpoint.prev.pt.bak"))
    path.with_name("checkpoint.prev.pt").write_bytes(b"garbage too")
    assert resume_state.load(path, "cpu", log=lambda *a, **k: None) is None


@pytest.mark.parametrize(
    "run, extra, words",
    [
        ({"method": "cohen", "hparams": {"sigma": float("inf")}}, {}, "runs.x.hparams.sigma: must be a finite number"),
        ({"method": "cohen"}, {"train": {"lr": float("nan")}}, "train.lr: must be a finite number, got nan"),
        ({"method": "macer", "hparams": {"k": 16.5}}, {}, "runs.x.hparams.k: must be int, got 16.5"),
        ({"method": "macer", "hparams": {"k": True}}, {}, "runs.x.hparams.k: must be int, got True"),
        ({"method": "cohen"}, {"certify": {"start": 500}}, "runs.x.certify.start: 500 is past the end of the digits"),
        ({"method": "cohen"}, {"certify": {"start": 400, "skip": 5, "count": 30}},
         "runs.x.certify.count: 30 images from start 400 every 5 reach index 545, past the digits test set"),
        ({"method": "linf_dist"}, {"certify": {"certifiers": ["cohen"]}},
         "runs.x.certify.certifiers.0: cohen evaluates l2-smoothing models; linf_dist is linf-certified"),
    ],
)  # fmt: skip
def test_bad_configs_fail_before_any_job_naming_the_field(run, extra, words):
    with pytest.raises(mc.ConfigError) as err:
        mc.validate({"dataset": "digits", **extra, "runs": {"x": run}})
    assert words in str(err.value) and "\n" not in str(err.value)


def _cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "methods", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_expected_failures_are_one_line_with_the_traceback_behind_debug(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("runs:\n  x: {method: cohen\n")
    out = _cli("train", "--configfile", str(bad_yaml), "--run", "x", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"error: config file {bad_yaml}: not valid YAML at line")
    assert len(out.stderr.strip().splitlines()) == 1
    out = _cli("certify", "--run", "cohen-0.25", "--shard", "3/2", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: --shard I/N needs 0 <= I < N, got '3/2'"
    out = _cli("certify", "--run", "cohen-0.25", "--certifier", "nope", cwd=tmp_path)
    assert out.returncode == 2 and "error: unknown certifier 'nope'" in out.stderr and "Traceback" not in out.stderr
    out = _cli("--debug", "certify", "--run", "cohen-0.25", "--certifier", "nope", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr


def _copy_run(trained, tmp_path):
    """results/digits/cohen-0.25/seed0 with the run's files and one fresh certification."""
    out, spec = trained
    run_dir = tmp_path / "results" / "digits" / "cohen-0.25" / "seed0"
    shutil.copytree(out, run_dir, ignore=shutil.ignore_patterns("state", "*.lock"))
    tsv = certify_run(run_dir / "model.pt", spec, run_dir / "certify" / "cohen.tsv", device="cpu", progress=False)
    return run_dir, tsv


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda lines: lines[:2] + [lines[1]] + lines[3:], "this index appears twice"),
        (lambda lines: lines[:-1], "its indices are not the sidecar's subset"),
        (lambda lines: [lines[0]] + [lines[1].replace("\t", "\tx", 1)] + lines[2:], "column label: not a number"),
        (lambda lines: [lines[0], "\t".join(["0", "3", "3", "-0.5", *lines[1].split("\t")[4:]])] + lines[2:],
         "negative radius"),
        (lambda lines: [lines[0], "\t".join(["0", "3", "3", "99.0", *lines[1].split("\t")[4:]])] + lines[2:],
         "above the certifier's largest possible"),
        (lambda lines: [lines[0], "\t".join(["0", "3", "4", "0.0", "1", *lines[1].split("\t")[5:]])] + lines[2:],
         "`correct` disagrees with predict == label"),
    ],
)  # fmt: skip
def test_summarize_refuses_a_tsv_that_contradicts_itself(trained, tmp_path, edit, words):
    from methods.report.summary import summarize

    _, tsv = _copy_run(trained, tmp_path)
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(InputError, match=words) as err:
        summarize([tsv], [0.0], tmp_path / "summary.csv")
    assert str(tsv) in str(err.value)


def test_summarize_refuses_a_tsv_of_an_earlier_model(trained, tmp_path):
    """Retrained after certifying: run.json's model.pt is another file than the one the TSV certified."""
    from methods.report.summary import summarize

    run_dir, tsv = _copy_run(trained, tmp_path)
    summarize([tsv], [0.0], tmp_path / "ok.csv")  # as certified: fine
    run = json.loads((run_dir / "run.json").read_text())
    run["models"]["model.pt"] = "0" * 64
    (run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(InputError, match="certified an earlier model.pt"):
        summarize([tsv], [0.0], tmp_path / "summary.csv")
    run["spec"]["hparams"] = {**run["spec"]["hparams"], "sigma": 0.5}
    run.pop("models")
    (run_dir / "run.json").write_text(json.dumps(run))
    with pytest.raises(InputError, match="other hyper-parameters than run.json's"):
        summarize([tsv], [0.0], tmp_path / "summary.csv")


def test_a_collapsed_run_is_flagged_in_the_summary_tables_and_figure_labels(trained, tmp_path):
    from methods.report.labels import run_labels
    from methods.report.summary import summarize

    _, tsv = _copy_run(trained, tmp_path)
    meta = json.loads(tsv.with_suffix(".json").read_text())
    meta["model_info"]["health"] = "collapsed: training accuracy at chance in epochs 3-30, to the end"
    tsv.with_suffix(".json").write_text(json.dumps(meta))
    summary = summarize([tsv], [0.0], tmp_path / "summary.csv")
    assert summary["train_health"].iloc[0].startswith("collapsed")
    label = run_labels(summary).iloc[0]
    assert label.startswith("cohen-0.25 (collapsed)")
