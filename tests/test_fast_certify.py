"""The certification fast path against the plain one: same noise, same counts in fp32; bf16 agreement; soundness of
every smoothing certifier through the fast sampler; slots refilled by plans of different lengths."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import norm
from test_smoothing import Constant, HalfSpace

from methods.certify.adaptive import adaptive_plan
from methods.certify.sampling import FastSampler, FastSettings, plain_counts, run_plain
from methods.certify.smoothing import certify_plan, max_radius, t_certify_plan
from methods.certify.step import certify_run
from methods.core.tsv import read_tsv

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A Cohen σ = 0.25 digits model trained to ≈ 90% (8 short epochs), and its spec."""
    from conftest import tiny_config

    from methods import config as mc
    from methods.checkpoint import load_checkpoint
    from methods.train.loop import train

    spec = mc.resolve_run(tiny_config(epochs=8, lr=0.1, step_size=6, batch_size=64), "cohen-0.25", seed=0)
    path = train(spec, tmp_path_factory.mktemp("run"), device="cpu", progress=False)
    model, _ = load_checkpoint(path, CPU)
    return path, spec, model


def _digits_images(count: int) -> torch.Tensor:
    from methods.core import data

    test = data.load("digits", "test")
    return torch.stack([test[i][0] for i in range(count)])


def _counts_plan(sizes):
    """A plan that asks for `sizes` in turn and returns every request's counts."""
    got = []
    for size in sizes:
        got.append((yield size))
    return got


def test_fp32_fast_path_counts_equal_the_plain_path_on_the_same_noise(digits_model):
    """Several images per round, requests that are not multiples of batch_size (remainder blocks), forward passes
    split into chunks: every request's counts equal the plain loop's, image by image."""
    _, _, model = digits_model
    images = _digits_images(5)
    sizes, batch = [37, 250, 101], 64
    for max_batch, slots, chunk in [(48, 1, 48), (200, 3, 192)]:  # a block split over two passes; 3 images a round
        sampler = FastSampler(model, 10, 0.25, batch, (1, 8, 8), CPU, FastSettings(torch.float32, max_batch=max_batch))
        assert (sampler.slots, sampler.chunk) == (slots, chunk)
        items = [(i, images[i], torch.Generator().manual_seed(i), _counts_plan(sizes)) for i in range(5)]
        fast = {key: outcome for key, outcome in sampler.run(items)}
        for i in range(5):
            generator = torch.Generator().manual_seed(i)
            plain = [plain_counts(model, images[i], size, 0.25, 10, batch, generator) for size in sizes]
            assert [c.tolist() for c in fast[i].result] == [c.tolist() for c in plain]
            assert fast[i].samples == sum(sizes) and fast[i].seconds > 0


def test_certify_run_fast_fp32_equals_plain(digits_model, tmp_path):
    """The certify step on both paths (fp32): identical TSVs but for time and path; the sidecar records the path."""
    path, spec, _ = digits_model
    frames = {}
    for fast in (False, True):
        cfg = {**spec["certify"], "fast": fast, "dtype": "float32", "compile": False, "n": 1000, "count": 6}
        out = certify_run(path, {**spec, "certify": cfg}, tmp_path / f"fast{fast}.tsv", device="cpu", progress=False)
        frames[fast] = read_tsv(out)
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["path"] == ("fast" if fast else "plain") and meta["dtype"] == "float32"
    assert set(frames[True]["path"]) == {"fast"} and set(frames[False]["path"]) == {"plain"}
    assert (frames[True]["samples"] == 20 + 1000).all()
    columns = ["idx", "label", "predict", "radius", "correct", "dtype", "samples"]
    assert frames[True][columns].equals(frames[False][columns])
    assert (frames[True]["correct"] == 1).sum() >= 3  # a real model, not a constant one


def test_bf16_predictions_agree_with_fp32_on_a_trained_digits_model(digits_model):
    """bf16 autocast certifies the bf16 base classifier; per noisy sample it must agree with fp32 ≥ 99%."""
    _, _, model = digits_model
    images = _digits_images(20)
    generator = torch.Generator().manual_seed(0)
    noisy = (images.unsqueeze(1) + 0.25 * torch.randn(20, 500, 1, 8, 8, generator=generator)).flatten(0, 1)
    with torch.inference_mode():
        fp32 = model(noisy).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.to(memory_format=torch.channels_last)(
                noisy.contiguous(memory_format=torch.channels_last)
            ).argmax(1)
    agreement = (fp32 == bf16).float().mean().item()
    print(f"bf16 vs fp32 per-sample agreement on {len(noisy)} noisy digits: {agreement:.4%}")
    assert agreement >= 0.99
    # and through the sampler: on the same noise the counts differ by at most the disagreeing draws
    counts = {}
    for dtype in (torch.float32, torch.bfloat16):
        sampler = FastSampler(model, 10, 0.25, 500, (1, 8, 8), CPU, FastSettings(dtype, max_batch=1000))
        [(_, outcome)] = list(sampler.run([(0, images[0], torch.Generator().manual_seed(3), _counts_plan([2000]))]))
        counts[dtype] = outcome.result[0]
    assert int((counts[torch.float32] - counts[torch.bfloat16]).abs().sum()) <= 2 * 0.01 * 2000


def test_compiled_fast_path_agrees_with_eager(digits_model):
    """torch.compile (inductor, static shapes) computes the same classifier up to float rounding."""
    _, _, model = digits_model
    image = _digits_images(1)[0]
    results = {}
    for compile_ in (False, True):
        sampler = FastSampler(
            model, 10, 0.25, 500, (1, 8, 8), CPU, FastSettings(torch.float32, compile=compile_, max_batch=1000)
        )
        [(_, outcome)] = list(sampler.run([(0, image, torch.Generator().manual_seed(5), _counts_plan([3000]))]))
        results[compile_] = outcome.result[0]
        assert sampler.describe()["compile"] is compile_
    assert int((results[True] - results[False]).abs().sum()) <= 6  # ≤ 0.1% of the draws may flip on a near-tie


SETTINGS = [FastSettings(torch.float32, max_batch=4096), FastSettings(torch.bfloat16, max_batch=4096)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["fp32", "bf16"])
@pytest.mark.parametrize("plan", ["cohen", "t-certify", "adaptive"])
@pytest.mark.parametrize("distance", [0.05, 0.2, 0.4])
def test_every_certifier_is_sound_on_the_fast_path(settings, plan, distance):
    """A half-space has exact robust radius d (pA = Φ(d/σ)): no certificate may exceed d, on any path or dtype."""
    sigma, n = 0.25, 20_000
    x = torch.full((1, 3, 3), 0.5)
    x[0, 0, 0] += distance
    plans = {
        "cohen": lambda: certify_plan(100, n, sigma, 0.001),
        "t-certify": lambda: t_certify_plan(100, n, sigma, 0.001),
        "adaptive": lambda: adaptive_plan(100, n, sigma, 0.001, radii=[0.0, 0.025, 0.1, 0.15, 0.3, 0.35]),
    }
    sampler = FastSampler(HalfSpace(0.5), 2, sigma, 2500, (1, 3, 3), CPU, settings)
    items = [(seed, x, torch.Generator().manual_seed(seed), plans[plan]()) for seed in range(4)]
    for _, outcome in sampler.run(items):
        prediction, radius, _ = outcome.result
        assert prediction == 1
        assert 0 <= radius <= distance


@pytest.mark.parametrize("settings", SETTINGS, ids=["fp32", "bf16"])
def test_constant_classifier_and_boundary_on_the_fast_path(settings):
    """Closed forms through the fast sampler: unanimous draws give σ·Φ⁻¹(α^(1/n)); on the boundary it abstains."""
    sigma, n, alpha = 0.5, 10_000, 0.001
    sampler = FastSampler(Constant(3), 10, sigma, 1000, (1, 4, 4), CPU, settings)
    [(_, outcome)] = list(sampler.run([(0, torch.rand(1, 4, 4), None, certify_plan(10, n, sigma, alpha))]))
    assert outcome.result[:2] == (3, pytest.approx(max_radius(sigma, n, alpha), rel=1e-12))
    boundary = FastSampler(HalfSpace(0.5), 2, 0.25, 5000, (1, 3, 3), CPU, settings)
    [(_, outcome)] = list(
        boundary.run(
            [(0, torch.full((1, 3, 3), 0.5), torch.Generator().manual_seed(0), certify_plan(100, 20_000, 0.25, 0.001))]
        )
    )
    assert outcome.result[:2] == (-1, 0.0)


def test_slots_are_refilled_as_plans_of_different_lengths_finish():
    """Six images, three slots, plans of 1–3 requests: every image gets exactly its own answer, as on the plain
    path, and the samples it asked for."""
    model = HalfSpace(0.5)
    xs = [torch.full((1, 2, 2), v) for v in (0.1, 0.45, 0.5, 0.55, 0.9, 0.7)]
    sizes = [[50], [300, 20], [10, 10, 10], [500], [1, 2, 3], [999]]

    def items():
        return [(i, xs[i], torch.Generator().manual_seed(i), _counts_plan(sizes[i])) for i in range(6)]

    sampler = FastSampler(model, 2, 0.3, 100, (1, 2, 2), CPU, FastSettings(torch.float32, max_batch=300))
    assert sampler.slots == 3
    fast = dict(sampler.run(items()))
    plain = dict(run_plain(model, 2, 0.3, 100, items()))
    for i in range(6):
        assert [c.tolist() for c in fast[i].result] == [c.tolist() for c in plain[i].result]
        assert fast[i].samples == plain[i].samples == sum(sizes[i])


class CountingPasses(HalfSpace):
    """HalfSpace that counts its forward passes."""

    passes = 0

    def forward(self, x):
        self.passes += 1
        return super().forward(x)


def test_requests_shorter_than_a_block_fill_the_round_with_more_images():
    """40 images asking 100 draws each (CERTIFY's n0, the adaptive certifier's first look) at batch_size 400: a round
    of full blocks holds 10 images (4,000 samples), but the sampler holds 4× as many, so the 40 short requests share
    one pass instead of four; then 12 images asking three blocks each take 4 passes, not 6: the last two images'
    blocks share one round once nothing new is left to start. Every image gets the plain path's counts."""
    xs = [torch.full((1, 2, 2), 0.3 + 0.01 * i) for i in range(40)]
    model = CountingPasses(0.5)
    sampler = FastSampler(model, 2, 0.3, 400, (1, 2, 2), CPU, FastSettings(torch.float32, max_batch=4000))
    assert (sampler.slots, sampler.in_flight, sampler.chunk) == (10, 40, 4000)

    def items(sizes, count):
        return [(i, xs[i], torch.Generator().manual_seed(i), _counts_plan(sizes)) for i in range(count)]

    for sizes, count, passes in [([100], 40, 1), ([1200], 12, 4)]:
        model.passes = 0
        fast = dict(sampler.run(items(sizes, count)))
        assert model.passes == passes
        plain = dict(run_plain(HalfSpace(0.5), 2, 0.3, 400, items(sizes, count)))
        assert sorted(fast) == list(range(count))
        for i in range(count):
            assert [c.tolist() for c in fast[i].result] == [c.tolist() for c in plain[i].result]
            assert fast[i].samples == sum(sizes)


class CountingRows(HalfSpace):
    """HalfSpace that counts the rows it is asked to classify."""

    rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return super().forward(x)


def test_an_eager_round_of_short_requests_classifies_only_the_rows_it_drew():
    """Short requests (the sequential certifier's looks) leave most of a round's 4,000-row chunk empty: the eager
    pass classifies the drawn rows only, not the stale rest of the buffer, and gives the plain path's counts."""
    xs = [torch.full((1, 2, 2), 0.3 + 0.05 * i) for i in range(3)]
    model = CountingRows(0.5)
    sampler = FastSampler(model, 2, 0.3, 400, (1, 2, 2), CPU, FastSettings(torch.float32, max_batch=4000))
    sizes = [110, 121, 133]

    def items():
        return [(i, xs[i], torch.Generator().manual_seed(i), _counts_plan(sizes)) for i in range(3)]

    fast = dict(sampler.run(items()))
    assert model.rows == 3 * sum(sizes)
    plain = dict(run_plain(HalfSpace(0.5), 2, 0.3, 400, items()))
    for i in range(3):
        assert [c.tolist() for c in fast[i].result] == [c.tolist() for c in plain[i].result]


def test_a_plan_asking_for_nothing_is_refused():
    def bad():
        yield 0

    sampler = FastSampler(HalfSpace(), 2, 0.3, 10, (1, 2, 2), CPU, FastSettings(torch.float32, max_batch=10))
    with pytest.raises(ValueError, match="asked for 0 samples"):
        list(sampler.run([(0, torch.zeros(1, 2, 2), None, bad())]))


def test_half_space_counts_follow_the_gaussian_tail():
    """The fast path's votes are draws of the right distribution: P[x0 + σε > ½] = Φ((x0 − ½)/σ)."""
    x = torch.full((1, 2, 2), 0.6)
    sampler = FastSampler(HalfSpace(0.5), 2, 0.25, 5000, (1, 2, 2), CPU, FastSettings(torch.bfloat16))
    [(_, outcome)] = list(sampler.run([(0, x, torch.Generator().manual_seed(0), _counts_plan([40_000]))]))
    share = outcome.result[0][1].item() / 40_000
    assert share == pytest.approx(norm.cdf(0.1 / 0.25), abs=4 * (0.25 / 40_000) ** 0.5)
