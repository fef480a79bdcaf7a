"""The self-check (`python -m methods doctor`), the fast paths' compile fallback and what records it, and the GPU
acceptance script's CPU-runnable parts.

- the doctor on this CPU (`--device cpu --quick`, as CI runs it): exit 0, every check listed, every check it cannot
  run here skipped with its reason;
- a forced compile failure (torch.compile monkeypatched to fail) falls back to eager with one warning, and the
  outputs say so: the certify sidecar (also after merging shards) and run.json / train_log.tsv;
- a forced fast/plain disagreement fails the check with an error naming the setting that turns the path off;
- the `doctor` Snakemake target exists and is not part of the default target; tests/gpu/run.sh is valid bash.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from methods import config as mc
from methods.bench import doctor
from methods.certify import sampling
from methods.certify.sampling import FastSampler, FastSettings
from methods.certify.smoothing import certify_plan
from methods.certify.step import certify_run, merge_shards
from methods.train import fast as fast_train
from methods.train.loop import train

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _failing_compile(message="no compiler here", when="call"):
    """A stand-in for torch.compile that fails when called (`when="compile"`) or at the compiled code's first call,
    as inductor does when it cannot build a graph."""

    def fake(fn, *args, **kwargs):
        if when == "compile":
            raise RuntimeError(message)

        def compiled(*a, **k):
            raise RuntimeError(f"{message}\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")

        return compiled

    return fake


def _fallback_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]


# ---------------------------------------------------------------------------------------------------------------
# the doctor on this CPU, as CI runs it


def test_doctor_passes_on_this_cpu_and_says_why_it_skips(tmp_path):
    out = tmp_path / "doctor.json"
    run = subprocess.run(
        [sys.executable, "-m", "methods", "doctor", "--device", "cpu", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["device"] == "cpu"
    for key in ("torch", "cuda", "cudnn", "triton", "device_name", "bf16_native", "host_free_bytes"):
        assert key in report["environment"]
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == [name for name, _, _ in doctor.checks()]  # every check reported, in order
    assert {c["status"] for c in checks.values()} <= {"pass", "skip"}
    for check in checks.values():
        assert check["detail"], check  # a skip says why, a pass what it compared
        assert check["name"] in run.stdout and check["detail"][:30] in run.stdout.replace("\n" + doctor.INDENT, " ")
    triton = checks["l∞-dist: Triton = chunked"]
    assert triton["status"] == "skip" and "needs CUDA" in triton["detail"]
    assert checks["certify: compile, CUDA graphs"]["status"] == "skip"  # --quick on the CPU, with the reason
    bf16 = checks["certify: bf16 ≈ fp32 per sample"]
    assert bf16["status"] == ("pass" if sampling.bf16_supported(CPU) else "skip")
    for must_run in ("tiny model (plain training)", "certify: fast = plain, fp32", "DDP: 2 processes, one step"):
        assert checks[must_run]["status"] == "pass", checks[must_run]
    assert all(checks[f"train step: {m}"]["status"] == "pass" for m in ("cohen", "salman", "macer", "linf_dist"))
    assert "OK:" in run.stdout and "0 failed" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_doctor_on_a_missing_gpu_is_a_one_line_error(capsys):
    from methods.__main__ import main

    assert main(["doctor", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: doctor:") and "CUDA is not available" in err and "\n" not in err


def test_the_header_on_a_gpu_names_versions_device_bf16_tf32_and_free_memory():
    """What `environment` gathers on CUDA (not runnable here), as the header prints it: one screen wide."""
    env = {"python": "3.11.7", "torch": "2.14.1+cu130", "cuda": "13.0", "cudnn": "9.24.0", "triton": "3.8.0"}
    env.update(host="gpu1", device="cuda", device_name="NVIDIA H200", bf16_native=True, cpu_threads=16)
    env.update(host_free_bytes=2**37, gpus=1, capability="sm_90", free_bytes=140 * 2**30, total_bytes=141 * 2**30)
    env.update(tf32_supported=True, tf32_matmul=False, tf32_cudnn=True, nccl="2.30.7")
    text = doctor.format_environment(env)
    assert "cuda: NVIDIA H200, sm_90, 1 GPU(s), 140.0 GiB free of 141.0 GiB, NCCL 2.30.7" in text
    assert "cuDNN 9.24.0" in text and "Triton 3.8.0" in text
    assert "bf16    native" in text and "TF32    supported; pinned by train.tf32" in text and "conv on" in text
    assert max(len(line) for line in text.splitlines()) <= 120
    cpu = doctor.format_environment(doctor.environment(CPU))
    assert "host memory free" in cpu and "TF32 n/a on the CPU" in cpu


# ---------------------------------------------------------------------------------------------------------------
# the checks themselves, on a trained tiny model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The doctor's environment after its first check: the tiny digits model trained on the plain path."""
    env = doctor.Env(CPU, quick=True, workdir=tmp_path_factory.mktemp("doctor"))
    outcome = doctor.check_tiny_model(env)
    assert env.model is not None and "clean accuracy" in outcome.detail
    return env


def _full(env) -> doctor.Env:
    """The same model, the full checks (the CPU compiles only without --quick)."""
    return doctor.Env(env.device, quick=False, workdir=env.workdir, model=env.model, sigma=env.sigma)


def test_bf16_agreement_check_on_the_trained_model(env):
    """Emulated on a CPU without native bf16 (the doctor skips it there): the same check a GPU runs."""
    outcome = doctor.check_certify_bf16(env, force=True)
    agreement = float(outcome.detail.split("%")[0]) / 100
    assert agreement >= doctor.BF16_AGREEMENT


def test_a_fast_path_that_disagrees_fails_naming_certify_fast(env, monkeypatch):
    original = FastSampler._build_forward

    def shifted(self, model):  # the fast path votes for the next class on every draw
        forward, eager = original(self, model)
        return (lambda x: (forward(x) + 1) % 10), eager

    monkeypatch.setattr(FastSampler, "_build_forward", shifted)
    result = doctor.run_check("certify", "certify.fast: false", doctor.check_certify_fp32, env)
    assert result.status == "fail" and result.setting == "certify.fast: false"
    assert "differ from the plain path" in result.detail and "`certify.fast: false`" in result.detail
    assert "turn it off: certify.fast: false" in doctor.format_result(result)


def test_a_compiled_sampler_that_disagrees_fails_naming_certify_compile(env, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: lambda x: (fn(x) + 3) % 10)
    with pytest.raises(doctor.FastPathMismatch, match="certify.compile: false") as raised:
        doctor.check_certify_compile(_full(env))
    assert raised.value.setting == "certify.compile: false"


def test_a_compile_failure_in_the_sampler_check_is_a_fallback_not_a_failure(env, monkeypatch):
    monkeypatch.setattr(torch, "compile", _failing_compile("inductor is broken"))
    result = doctor.run_check("compile", "certify.compile: false", doctor.check_certify_compile, _full(env))
    assert result.status == "fallback" and "inductor is broken" in result.detail
    assert "skips the attempt" in doctor.format_result(result)


def test_bf16_predictions_that_disagree_fail_naming_certify_dtype(env, monkeypatch):
    original = FastSampler.predict
    monkeypatch.setattr(FastSampler, "predict", lambda self, x: (original(self, x) + 1) % 10)
    with pytest.raises(doctor.FastPathMismatch, match=r"turn that path off with `certify\.dtype: float32`"):
        doctor.check_certify_bf16(env, force=True)


def test_train_step_check_passes_compiled_and_names_the_culprit_when_paths_disagree(env, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: module)  # "compiles" to the same module
    outcome = doctor.check_train_step(env, "cohen", compile=True)
    assert outcome.fallback is None and "compiled" in outcome.detail

    # the compiled model computes other logits: re-run uncompiled, the fast path agrees, so compile is to blame
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: lambda *x, **kw: module(*x, **kw) * 0.5)
    with pytest.raises(doctor.FastPathMismatch, match=r"`train\.compile: false`"):
        doctor.check_train_step(env, "cohen", compile=True)

    # the fast path's own forward is wrong (compiled or not): train.fast is to blame
    original = fast_train.FastModel.forward
    monkeypatch.setattr(fast_train.FastModel, "forward", lambda self, x: original(self, x) * 0.5)
    with pytest.raises(doctor.FastPathMismatch, match=r"`train\.fast: false`"):
        doctor.check_train_step(env, "macer", compile=False)


def test_a_nan_on_the_fast_path_fails_the_train_check(env, monkeypatch):
    original = fast_train.FastModel.forward
    monkeypatch.setattr(fast_train.FastModel, "forward", lambda self, x: original(self, x) * float("nan"))
    result = doctor.run_check("train", "train.fast: false", doctor._bind(doctor.check_train_step, "cohen"), env)
    assert result.status == "fail" and result.setting == "train.fast: false" and "nan" in result.detail


def test_the_bf16_training_option_is_stepped_and_named_when_it_disagrees(env, monkeypatch):
    """Forced here (the doctor steps `train.dtype: bfloat16` only where bf16 is native): autocast, emulated on this
    CPU, within bf16's tolerance of the fp32 reference; a bf16 forward that computes something else names the
    setting that turns it off."""
    outcome = doctor.check_train_step(env, "cohen", bf16=True)
    assert "bf16 option: loss" in outcome.detail
    original = fast_train.FastModel.forward

    def wrong_in_bf16(self, x):
        out = original(self, x)
        return out * 0.5 if self.autocast_dtype is not None else out

    monkeypatch.setattr(fast_train.FastModel, "forward", wrong_in_bf16)
    with pytest.raises(doctor.FastPathMismatch, match=r"`train\.dtype: float32`"):
        doctor.check_train_step(env, "cohen", bf16=True)


def test_a_compile_failure_in_the_train_check_is_a_fallback(env, monkeypatch):
    monkeypatch.setattr(torch, "compile", _failing_compile("no C++ compiler"))
    result = doctor.run_check("t", "train.fast: false", doctor._bind(doctor.check_train_step, "salman", True), env)
    assert result.status == "fallback" and "no C++ compiler" in result.detail


def test_the_cli_exits_non_zero_and_names_the_setting(env, monkeypatch, capsys):
    from methods.__main__ import main

    original = FastSampler._build_forward
    monkeypatch.setattr(
        FastSampler,
        "_build_forward",
        lambda self, model: (lambda f, e: ((lambda x: (f(x) + 1) % 10), e))(*original(self, model)),
    )
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--device", "cpu", "--quick", "--only", "certify: fast"])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "turn it off: certify.fast: false" in out and "FAILED: " in out
    assert "train step" not in out  # --only: the tiny model and the chosen check


# ---------------------------------------------------------------------------------------------------------------
# compile failures fall back, with one warning, and the outputs record them: the certify sidecar


@pytest.mark.parametrize("when", ["compile", "call"])
def test_sampler_falls_back_to_eager_with_one_warning(when, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    x = torch.rand(1, 3, 3)

    def run(settings):
        sampler = FastSampler(model, 3, 0.5, 100, (1, 3, 3), CPU, settings)
        items = [(i, x, torch.Generator().manual_seed(i), certify_plan(10, 300, 0.5, 0.001)) for i in range(3)]
        return sampler, {key: outcome.result for key, outcome in sampler.run(items)}

    _, eager = run(FastSettings(torch.float32, max_batch=200))
    monkeypatch.setattr(torch, "compile", _failing_compile("no compiler here", when))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler, fallen = run(FastSettings(torch.float32, compile=True, max_batch=200))
    messages = _fallback_warnings(caught)
    assert len(messages) == 1 and "no compiler here" in messages[0] and "certify.compile: false" in messages[0]
    assert "TORCHDYNAMO_VERBOSE" not in messages[0]  # one line
    assert fallen == eager  # eager computes the same classifier
    described = sampler.describe()
    assert described["compile_requested"] is True
    assert described["compiled"] is False and described["compile"] is False and described["cuda_graphs"] is False
    assert "no compiler here" in described["fallback"]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    spec = mc.resolve_run(tiny_config(), "cohen-0.25", seed=0)
    return train(spec, tmp_path_factory.mktemp("run"), device="cpu", progress=False), spec


def test_certify_sidecar_records_the_fallback_and_merging_keeps_it_per_shard(digits_model, tmp_path, monkeypatch):
    path, spec = digits_model
    spec = {**spec, "certify": {**spec["certify"], "fast": True, "compile": True, "dtype": "float32"}}
    shards = []
    for shard, fake in enumerate([_failing_compile("no compiler on this node"), lambda fn, *a, **k: lambda x: fn(x)]):
        monkeypatch.setattr(torch, "compile", fake)  # shard 0's node cannot compile; shard 1's "compiles"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = certify_run(
                path, spec, tmp_path / f"s{shard}.tsv", device="cpu", shard=shard, shards=2, progress=False
            )
        shards.append(out)
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["path"] == "fast" and meta["compile_requested"] is True
        if shard == 0:
            assert len(_fallback_warnings(caught)) == 1
            assert meta["compiled"] is False and "no compiler on this node" in meta["fallback"]
        else:
            assert meta["compiled"] is True and meta["fallback"] is None and not _fallback_warnings(caught)
    merged = merge_shards(shards, tmp_path / "cohen.tsv")  # the shards differ only in how their node compiled
    meta = json.loads(merged.with_suffix(".json").read_text())
    assert meta["compile_requested"] is True
    assert [s["compiled"] for s in meta["shard_compile"]] == [False, True]
    assert "no compiler on this node" in meta["shard_compile"][0]["fallback"]


def test_plain_certify_sidecar_has_the_same_fields(digits_model, tmp_path):
    path, spec = digits_model
    spec = {**spec, "certify": {**spec["certify"], "fast": False}}
    meta = json.loads(
        certify_run(path, spec, tmp_path / "p.tsv", device="cpu", progress=False).with_suffix(".json").read_text()
    )
    assert meta["path"] == "plain" and meta["compiled"] is False and meta["fallback"] is None


# ---------------------------------------------------------------------------------------------------------------
# ... and run.json / train_log.tsv


@pytest.mark.parametrize("when", ["compile", "call"])
def test_training_falls_back_to_eager_with_one_warning_and_run_json_says_so(when, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", _failing_compile("inductor cannot build", when))
    spec = mc.resolve_run(tiny_config(epochs=1, fast=True, compile=True), "cohen-0.25", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(spec, tmp_path, device="cpu", progress=False)
    messages = _fallback_warnings(caught)
    assert len(messages) == 1 and "inductor cannot build" in messages[0] and "train.compile: false" in messages[0]
    record = json.loads((tmp_path / "run.json").read_text())["train_path"]
    assert record["path"] == "fast" and record["compile_requested"] is True
    assert record["compiled"] is False and "inductor cannot build" in record["fallback"]
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert not log["compiled"].any() and log["loss"].notna().all()


def test_compiled_training_that_works_is_recorded_as_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: module)
    spec = mc.resolve_run(tiny_config(epochs=1, fast=True, compile=True), "cohen-0.25", seed=0)
    train(spec, tmp_path, device="cpu", progress=False)
    record = json.loads((tmp_path / "run.json").read_text())["train_path"]
    assert record["compile_requested"] and record["compiled"] and record["fallback"] is None
    assert pd.read_csv(tmp_path / "train_log.tsv", sep="\t")["compiled"].all()


def test_a_backward_that_cannot_compile_falls_back_at_the_forward(monkeypatch):
    """AOTAutograd compiles a backward lazily, at backward() inside the method's step; the guard asks for it at the
    forward, where a failure can still fall back."""
    from torch._functorch.aot_autograd import aot_module_simplified

    def backend(gm, inputs):
        def fails(gm, example_inputs):
            raise RuntimeError("no backward compiler")

        return aot_module_simplified(gm, inputs, fw_compiler=lambda g, _: g, bw_compiler=fails)

    torch._dynamo.reset()
    monkeypatch.setattr(fast_train, "COMPILE_BACKEND", backend)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    path = fast_train.FastPath(fast=True, channels_last=True, compile=True)
    step_model = fast_train.step_model(model, path, CPU)
    with pytest.warns(RuntimeWarning, match="no backward compiler"):
        step_model(torch.rand(2, 1, 8, 8)).sum().backward()
    assert not step_model.compiled and all(p.grad is not None for p in model.parameters())
    assert fast_train.compile_record(step_model, path)["compiled"] is False
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------------------
# the Snakemake target and the GPU acceptance script


def _dry_run_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: jobs} of a Snakemake dry run's job table."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    out = subprocess.run([*cmd, *args, "-n", "--quiet", "rules"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("Job stats:")[1].split("\ntotal")[0].splitlines()
    rows = [line.split() for line in table if line.strip() and not line.startswith(("job", "---"))]
    return {rule: int(count) for rule, count in rows}


def test_the_doctor_target_exists_and_is_not_part_of_the_default_target(tmp_path):
    assert _dry_run_jobs(tmp_path, "doctor") == {"doctor": 1}
    default = _dry_run_jobs(tmp_path)
    assert "train" in default and "doctor" not in default


def test_the_gpu_acceptance_script_is_valid_bash():
    script = REPO / "tests" / "gpu" / "run.sh"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for step in ("methods doctor", "pytest", "acceptance.py", "snakemake"):
        assert step in text, step


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the doctor step would really run")
def test_the_gpu_acceptance_script_records_a_failed_step_and_still_writes_its_report(tmp_path):
    """Its bash on this CPU: every step skipped but the doctor, which fails here (no CUDA) and is recorded as such;
    the script goes on, writes the one report file and exits 1."""
    env = {
        "PYTHON": sys.executable,
        "GPU_ACCEPTANCE_SKIP": "install tests certify train linf dag",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        ["bash", str(REPO / "tests" / "gpu" / "run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == ["install", "doctor", "tests", "certify", "train", "linf", "dag"]
    assert dict((s[0], s[1]) for s in steps)["doctor"] == "failed (exit 2)"
    assert "CUDA is not available" in (tmp_path / "doctor.txt").read_text()
    report = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| doctor | failed (exit 2) |" in report and "no certify.json" in report


def _acceptance():
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    try:
        import acceptance
    finally:
        sys.path.pop(0)
    return acceptance


def test_acceptance_installs_only_what_is_missing_and_never_torch(monkeypatch):
    acceptance = _acceptance()
    requirements = acceptance._requirements()
    assert any(r.startswith("snakemake") for r in requirements) and any(r.startswith("pytest") for r in requirements)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10: the plain parse gives the same list
    assert acceptance._requirements() == requirements
    assert acceptance.missing_requirements() == []  # this environment has them all
    assert not any(acceptance._name(r) in acceptance.TORCH_BOUND for r in acceptance.missing_requirements())
    assert acceptance.torchvision_requirement("2.11.0+cu128") == "torchvision==0.26.*"
    assert acceptance.torchvision_requirement("2.14.1") == "torchvision==0.29.*"


def test_acceptance_report_puts_every_number_in_one_file(tmp_path):
    """The report from what the steps write (the doctor's JSON as it lays it out; the GPU steps' files as their
    writers lay them out), and a line for each part that is missing."""
    acceptance = _acceptance()
    cpu = doctor.Env(CPU, quick=True, workdir=tmp_path)
    skipped = doctor.run_check("l∞-dist: Triton = chunked", "METHODS_LINF_TRITON=0", doctor.check_triton, cpu)
    passed = doctor.Result("DDP: 2 processes, one step", "pass", 6.5, "gloo: both processes hold the same weights")
    report = doctor.Report(doctor.environment(CPU), [skipped, passed])
    (tmp_path / "doctor.json").write_text(json.dumps(report.to_json()))
    (tmp_path / "steps.tsv").write_text("doctor\tpassed\t30\ncertify\ttimed out after 130 s\t135\n")
    (tmp_path / "pytest.txt").write_text("....\n5 passed, 300 deselected in 20.1s\n")
    fast = {"dtype": "bfloat16", "compiled": True, "cuda_graphs": True, "fallback": None, "forward_batch": 100000}
    fast.update(setup_seconds=50.0, images=50, seconds=20.0, sec_per_image=0.4, samples_per_sec=250250.0)
    fast.update(protocol_seconds=200.0, protocol_measured=False, speedup=40.0)
    reference = {"samples_per_sec": 6250.0, "sec_per_image": 16.0, "protocol_hours": 2.2, "tf32_conv": True}
    (tmp_path / "certify.json").write_text(
        json.dumps({"reference": reference, "fast": fast, "paper_sec_per_image": 15})
    )
    row = {c: 1.0 for c in ("sec_per_epoch", "speedup", "peak_mem_mb", "paper_sec_per_epoch", "batch")}
    acceptance._append_csv(tmp_path / "train.csv", [{"run": "macer-0.25", "path": "reference", **row}])
    acceptance._append_csv(tmp_path / "train.csv", [{"run": "macer-0.25", "path": "fast", **row}])
    path = acceptance.report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "gpu_acceptance.md"
    assert "| certify | timed out after 130 s | 135 |" in text and "DDP: 2 processes, one step | pass" in text
    assert "| l∞-dist: Triton = chunked | skip |" in text
    assert "5 passed, 300 deselected" in text
    assert "scaled from 50 images" in text and "40.0× the reference" in text
    assert text.count("| macer-0.25 |") == 2
    assert "no linf.csv" in text and "no summary.csv" in text


def test_the_gpu_dag_config_is_valid_and_builds_its_few_jobs(tmp_path):
    jobs = _dry_run_jobs(tmp_path, "--configfile", str(REPO / "tests" / "gpu" / "synthetic.yaml"))
    assert jobs["train"] == 2 and jobs["certify"] == 2 and jobs["summarize"] == 1
    assert sum(jobs.values()) <= 12  # a few jobs: the script gives the DAG 45 s
