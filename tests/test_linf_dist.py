"""ℓ∞-distance nets (methods/linf_dist.py): the tiled kernel against the broadcast oracle, the model's structural
properties (identity init, mean shift, 1-Lipschitz), certificates, losses by hand, schedules, units."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from methods import linf_dist as ld
from methods.core.interface import HparamError
from methods.kernels import lp_dist as op

INF = float("inf")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
STD = 0.2009


def _grads(fn, x, w, p, g, **kw):
    out = fn(x, w, p, **kw)
    return (out, *torch.autograd.grad(out, (x, w), g))


def _inputs(b, o, i, lo=-1.0, hi=1.0, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, i, generator=gen, dtype=dtype) * (hi - lo) + lo).requires_grad_()
    w = (torch.rand(o, i, generator=gen, dtype=dtype) * (hi - lo) + lo).requires_grad_()
    g = torch.randn(b, o, generator=gen, dtype=dtype)
    return x, w, g


# ------------------------------------------------------------------------------------------------ the kernel


@pytest.mark.parametrize("p", [1.0, 2.5, 8.0, 100.0, 1000.0, INF])
@pytest.mark.parametrize("budget_elems", [2 * 13, 3 * 6 * 13])  # batch split (1 column/tile) / output split
def test_chunked_matches_naive_values_and_grads(p, budget_elems):
    b, o, i = 6, 7, 13
    # |x − w| ≤ 1.2 keeps the oracle's |v|^1000 finite in float64
    x, w, g = _inputs(b, o, i, -0.6, 0.6)
    budget = budget_elems * 8  # float64
    bc, oc = op.plan_chunks(b, o, i, 8, budget)
    assert math.ceil(b / bc) * math.ceil(o / oc) > 1, "the test must force several tiles"
    ours = _grads(op.lp_dist, x, w, p, g, chunk_bytes=budget)
    oracle = _grads(op.naive_lp_dist, x, w, p, g)
    for a, e in zip(ours, oracle):
        assert torch.isfinite(e).all() and e.abs().max() > 0
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_tiles_cover_every_pair_once_and_respect_budget():
    for b, o, i, budget, buffers in [
        (512, 5120, 5120, 256 * 2**20, 1),
        (512, 5120, 5120, 8 * 2**20, 2),
        (7, 5, 3, 40, 1),
        (3, 10, 100, 10**9, 2),
        (9, 4, 50, 401 * 4, 1),
    ]:
        bc, oc = op.plan_chunks(b, o, i, 4, budget, buffers)
        assert bc * oc * i * 4 * buffers <= max(budget, i * 4 * buffers)
        seen = torch.zeros(b, o, dtype=torch.int64)
        for bs, os_ in op._tiles(b, o, bc, oc):
            seen[bs, os_] += 1
        assert (seen == 1).all()


def test_inf_backward_sends_the_gradient_to_the_first_tied_argmax():
    x = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    w = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[3.0], [5.0]], dtype=torch.float64)
    out, gx, gw = _grads(op.lp_dist, x, w, INF, g)
    torch.testing.assert_close(out, torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    # row 0: |v| = (1, 1, .5), first argmax 0, sign +; row 1: |v| = (2, 2, 2), first argmax 0, sign −
    torch.testing.assert_close(gx, torch.tensor([[3.0, 0, 0], [-5.0, 0, 0]], dtype=torch.float64))
    torch.testing.assert_close(gw, torch.tensor([[-3.0 + 5.0, 0, 0]], dtype=torch.float64))
    # the documented difference: autograd's amax splits the gradient evenly across ties
    _, nx, _ = _grads(op.naive_lp_dist, x, w, INF, g)
    torch.testing.assert_close(nx, torch.tensor([[1.5, -1.5, 0], [-5 / 3, 5 / 3, 5 / 3]], dtype=torch.float64))


@pytest.mark.parametrize("p", [1.0, 8.0, 1000.0, INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_distance_gives_zero_value_and_gradient(p, dtype):
    x = torch.tensor([[0.3, -1.2, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=dtype, requires_grad=True)
    w = torch.cat([x.detach()[:1], torch.ones(1, 4, dtype=dtype)]).requires_grad_()  # pairs (0,0) and (1,1): 0
    g = torch.zeros(2, 2, dtype=dtype)
    g[0, 0] = g[1, 1] = 1.0
    out, gx, gw = _grads(op.lp_dist, x, w, p, g)
    assert out[0, 0] == 0 and out[1, 1] == 0
    assert torch.isfinite(out).all()
    assert (gx == 0).all() and (gw == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_p_is_stable_where_the_naive_norm_overflows(dtype):
    x, w, _ = _inputs(4, 5, 64, -300.0, 300.0, seed=1, dtype=dtype)
    p = 1000.0
    with torch.no_grad():
        assert not torch.isfinite(op.naive_lp_dist(x, w, p)).all()  # |v|^1000 overflows
        inf_norm = op.lp_dist(x, w, INF)
    out = op.lp_dist(x, w, p)
    # ‖v‖∞ ≤ ‖v‖_p ≤ n^{1/p} ‖v‖∞
    assert (out >= inf_norm * (1 - 1e-6)).all() and (out <= inf_norm * 64 ** (1 / p) * (1 + 1e-6)).all()
    # the gradient of a norm has dual norm 1: ‖∇_v ‖v‖_p‖_q = 1 with 1/p + 1/q = 1
    xv = x[:1].detach().requires_grad_()
    (gx,) = torch.autograd.grad(op.lp_dist(xv, w[:1].detach(), p).sum(), xv)
    assert torch.isfinite(gx).all()
    q = p / (p - 1)
    assert float(gx.abs().pow(q).sum().pow(1 / q)) == pytest.approx(1.0, rel=1e-4)


def test_rejects_p_below_one():
    with pytest.raises(ValueError):
        op.lp_dist(torch.zeros(1, 2), torch.zeros(1, 2), 0.5)


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch
    from methods.kernels.lp_dist import lp_dist
    torch.set_num_threads(1)  # steadier on a shared machine
    x = torch.randn(32, 2048, requires_grad=True); w = torch.randn(2048, 2048, requires_grad=True)
    lp_dist(x[:2], w[:8], 8.0).sum().backward()  # warm up the allocator and kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for p in (float("inf"), 8.0):
        lp_dist(x, w, p, chunk_bytes=8 * 2**20).sum().backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


def test_peak_memory_stays_far_below_the_naive_tensor():
    """32 × 2048 × 2048 float32 = 512 MiB naive; the tiled layer with an 8 MiB budget must stay well under it
    (what remains is x, W, their gradients and the B × out outputs / indices)."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 128 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, w, g = _inputs(8, 9, 33, seed=3, dtype=torch.float32)
    for p in (8.0, INF):
        cpu = _grads(op.lp_dist, x, w, p, g, chunk_bytes=4 * 33 * 9)
        xc, wc = x.detach().cuda().requires_grad_(), w.detach().cuda().requires_grad_()
        gpu = _grads(op.lp_dist, xc, wc, p, g.cuda(), chunk_bytes=4 * 33 * 9)
        for a, e in zip(gpu, cpu):
            torch.testing.assert_close(a.cpu(), e, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the model


def _model(depth=4, width=64, shape=(3, 4, 4), seed=0, **kw):
    torch.manual_seed(seed)
    return ld.LinfDistMLP(shape, 10, depth, width, CIFAR_MEAN[: shape[0]], STD, **kw)


def _pixels(n, shape=(3, 4, 4), seed=1):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _layer_io(model, x):
    io = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: io.append((i[0].detach(), o.detach()))) for layer in model.layers
    ]
    model(x)
    for h in hooks:
        h.remove()
    return io


def test_identity_init_copies_the_input_shifted_by_a_constant():
    model = _model().eval()
    assert model.p == INF
    io = _layer_io(model, _pixels(32))
    for layer, (inp, out) in zip(model.layers[:-1], io[:-1]):
        cols = torch.arange(layer.out_features) % layer.in_features
        torch.testing.assert_close(out, inp[:, cols] + 10.0)  # running mean is 0: a copy shifted by 10
    # the output layer has d_in > d_out: plain N(0, 1), no identity entries
    assert (model.layers[-1].weight > -6).all()


def test_identity_init_in_train_mode_is_a_centred_copy():
    model = _model().train()
    io = _layer_io(model, _pixels(32))
    inp, out = io[0]
    centred = inp - inp.mean(0)
    torch.testing.assert_close(out, centred[:, torch.arange(64) % 48], rtol=1e-5, atol=1e-5)


def test_mean_shift_is_not_detached_and_updates_the_running_mean():
    layer = ld.LinfDistLayer(5, 6, mean_shift=True, bias=False).train()
    x = torch.randn(8, 5, requires_grad=True)
    with torch.no_grad():
        u = op.lp_dist(x, layer.weight, INF)
    out = layer(x)
    torch.testing.assert_close(layer.running_mean, 0.1 * u.mean(0))
    # with the batch mean subtracted inside autograd, each column of the output sums to 0 whatever x is,
    # so the gradient of that sum vanishes; a detached mean would leave the gradient of u.sum()
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.abs().max() < 1e-5
    layer(x)  # second step: running = 0.9 · running + 0.1 · mean
    torch.testing.assert_close(layer.running_mean, 0.9 * 0.1 * u.mean(0) + 0.1 * u.mean(0))
    layer.eval()
    torch.testing.assert_close(layer(x), u - layer.running_mean)


def test_output_layer_has_bias_and_no_mean_shift():
    model = _model()
    assert all(layer.mean_shift and layer.bias is None for layer in model.layers[:-1])
    head = model.layers[-1]
    assert not head.mean_shift and head.bias is not None
    assert len(model.layers) == 4 and model.scale.item() == 1.0


def test_normalisation_uses_one_scalar_std_so_balls_map_exactly():
    model = _model()
    x, x2 = _pixels(16), _pixels(16, seed=2)
    dn = (model.normalize(x) - model.normalize(x2)).abs().amax(1)
    torch.testing.assert_close(dn, (x - x2).flatten(1).abs().amax(1) / STD)
    assert model.pixel_to_network(8 / 255) == pytest.approx(8 / 255 / STD)


def test_set_p_reaches_every_layer():
    model = _model()
    model.set_p(12.5)
    assert model.p == 12.5 and all(layer.p == 12.5 for layer in model.layers)


def _trained_model(steps=8):
    model = _model(depth=3, width=48)
    opt = torch.optim.Adam(ld.param_groups(model, 0.03, 0.006), betas=(0.9, 0.99), eps=1e-10)
    hp = ld.Hparams(depth=3, width=48)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(64, 3, 4, 4, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    for _ in range(steps):
        result = ld.step_objective(model, x, y, hp, progress=hp.p_end)  # p = ∞
        opt.zero_grad()
        result.loss.backward()
        opt.step()
    assert model.layers[0].running_mean.abs().max() > 0
    return model.eval()


@pytest.mark.parametrize("trained", [False, True])
def test_one_lipschitz_in_pixel_linf(trained):
    model = _trained_model() if trained else _model().eval()
    x = _pixels(200, seed=3)
    scale = torch.rand(200, 1, 1, 1, generator=torch.Generator().manual_seed(4)) ** 3  # small and large moves
    x2 = (x + scale * (torch.rand_like(x) * 2 - 1)).clamp(0, 1)
    with torch.no_grad():
        dz = (model(x) - model(x2)).abs().amax(1)
    dx = (x - x2).flatten(1).abs().amax(1)
    assert (dz <= dx / STD * (1 + 1e-5) + 1e-5).all()
    assert (dz > 0.5 * dx / STD).any()  # and the bound is not vacuous


def test_perturbations_inside_the_certified_radius_never_flip_the_prediction():
    model = _trained_model()
    x = _pixels(64, seed=6)
    with torch.no_grad():
        y = model(x).argmax(1)  # certify the model's own predictions so radii are positive
    cert = ld.certify_batch(model, x, y, 0.0)
    assert cert.correct.all() and (cert.radius > 0).all()
    r = (0.999 * cert.radius).view(-1, 1, 1, 1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(50):
            delta = r * (torch.rand(x.shape, generator=gen) * 2 - 1)
            assert (model(x + delta).argmax(1) == y).all()
            corner = r * torch.randint(0, 2, x.shape, generator=gen).mul(2).sub(1)
            assert (model(x + corner).argmax(1) == y).all()
    # one gradient-sign step of size just under the radius (the strongest single-step attack)
    xa = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(ld.margin(model(xa), y).sum(), xa)
    with torch.no_grad():
        assert (model(x - r * g.sign()).argmax(1) == y).all()
        # and past twice the radius the same attack flips some prediction (the test has teeth)
        assert (model(x - 3 * r * g.sign()).argmax(1) != y).any()


def test_certificates_refuse_finite_p_and_train_mode():
    model = _model().eval()
    x, y = _pixels(4), torch.zeros(4, dtype=torch.long)
    model.set_p(1000.0)
    for fn in (ld.certify_batch, ld.interval_certified):
        with pytest.raises(ValueError, match="not a certificate"):
            fn(model, x, y, 0.01)
    model.set_p(INF)
    model.train()
    for fn in (ld.certify_batch, ld.interval_certified):
        with pytest.raises(ValueError, match="not a certificate"):
            fn(model, x, y, 0.01)
    model.eval()
    ld.certify_batch(model, x, y, 0.01)


def test_interval_bounds_contain_the_logits_and_certify_a_superset():
    model = _trained_model()
    x = _pixels(64, seed=8)
    x[:16] = x[:16].round()  # pixels on the box edges, where clipping helps
    with torch.no_grad():
        y = model(x).argmax(1)
    cert = ld.certify_batch(model, x, y, 0.0)
    gen = torch.Generator().manual_seed(9)
    for eps in torch.quantile(cert.radius, torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])).tolist() + [0.0, 1.0]:
        margin_ok = ld.certify_batch(model, x, y, eps).certified
        box_ok = ld.interval_certified(model, x, y, eps)
        assert (box_ok | ~margin_ok).all()
        z_lo, z_hi = model.logit_bounds(x, eps)
        with torch.no_grad():
            for _ in range(5):
                z = model((x + eps * (torch.rand(x.shape, generator=gen) * 2 - 1)).clamp(0, 1))
                assert (z >= z_lo - 1e-5).all() and (z <= z_hi + 1e-5).all()
    eps = float(torch.quantile(cert.radius, 0.5))
    assert ld.certify_batch(model, x, y, eps).certified.any()


def test_radius_and_margin_rule_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    std = 0.25
    # margins 2, −2 (wrong), 0 (tie); radius = margin / 2 · std in pixels
    torch.testing.assert_close(ld.certified_radius(z, y, std), torch.tensor([0.25, 0.0, 0.0]))
    # strict: margin 2 == 2ε/std at ε = 0.25 is not certified; just below it is
    assert ld.is_certified(z, y, 0.25, std).tolist() == [False, False, False]
    assert ld.is_certified(z, y, 0.2499, std).tolist() == [True, False, False]


# ------------------------------------------------------------------------------------------------ losses, units


def test_theta_is_in_network_units():
    assert ld.theta(ld.Hparams()) == pytest.approx(2 * 0.09411 / 0.2009, abs=1e-12)
    assert ld.theta(ld.Hparams()) == pytest.approx(0.9369, abs=1e-4)  # logged by the official code as eps 0.4684
    assert ld.theta(ld.paper_hparams("v2-mnist-0.3")) == pytest.approx(2 * 0.45 / 0.3081)


Z = [[1.0, 0.5, -0.2], [0.0, 2.0, 1.0]]
Y = [0, 2]


def _hp_theta_one(**kw):
    return ld.Hparams(eps_train=0.1, scalar_std=0.2, **kw)  # θ = 2 · 0.1 / 0.2 = 1


def test_v1_loss_by_hand():
    hp = _hp_theta_one(loss="v1")
    # hinge h_j = max(0, z_j − z_y + 1), label entry 0:  row 0: (0, .5, 0)   row 1: (0, 2, 0)
    expected = 0.75 * (0.5 + 2.0) / 2 + 0.25 * ((0.5 / 3) + (2.0 / 3)) / 2
    got = ld.v1_loss(torch.tensor(Z), torch.tensor(Y), hp)
    assert float(got) == pytest.approx(expected)
    assert float(ld.loss(torch.tensor(Z), torch.tensor(Y), hp, 0.0)) == pytest.approx(expected)


def test_v2_loss_by_hand():
    hp = _hp_theta_one()
    s, lam = 2.0, 0.1
    # clip(1 + (z_j − z_y)/1, 0, 1):  row 0: j=1 → .5, j=2 → 0   row 1: j=0 → 0, j=1 → 1
    hinge = (0.5 + 1.0) / 2
    ce = [math.log(sum(math.exp(s * v) for v in row)) - s * row[t] for row, t in zip(Z, Y)]
    expected = hinge + lam * sum(ce) / 2
    got = ld.v2_loss(torch.tensor(Z), torch.tensor(Y), hp, lam, torch.tensor(s))
    assert float(got) == pytest.approx(expected)
    # through the schedule: λ at progress 0 is λ0
    hp = _hp_theta_one(lambda0=lam)
    assert float(ld.loss(torch.tensor(Z), torch.tensor(Y), hp, 0.0, s)) == pytest.approx(expected)


def test_v2_hinge_saturates_at_one_and_ignores_the_label_entry():
    hp = _hp_theta_one()
    z = torch.tensor([[0.0, 50.0, -50.0], [10.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    # row 0: max_j clip = 1; row 1: margin 10 ≥ θ, all clipped to 0
    assert float(ld.v2_loss(z, y, hp, 0.0, 1.0)) == pytest.approx(0.5)


def test_step_objective_sets_p_and_checks_the_std():
    model = _model()
    hp = ld.Hparams(scalar_std=STD)
    ld.step_objective(model, _pixels(4), torch.zeros(4, dtype=torch.long), hp, progress=100 + 1150 / 2)
    assert model.p == pytest.approx(math.sqrt(8 * 1000))
    with pytest.raises(HparamError, match="scalar_std"):
        ld.step_objective(model, _pixels(4), torch.zeros(4, dtype=torch.long), ld.Hparams(scalar_std=0.3081), 0.0)


# ------------------------------------------------------------------------------------------------ schedules


def test_p_schedule_edges_and_geometric_midpoint():
    hp = ld.Hparams()  # 8 until 100, → 1000 at 1250, then ∞
    assert ld.p_at(0.0, hp) == 8.0
    assert ld.p_at(100.0, hp) == 8.0
    assert ld.p_at(100.0 + 1e-6, hp) == pytest.approx(8.0, rel=1e-6)
    assert ld.p_at(675.0, hp) == pytest.approx(math.sqrt(8.0 * 1000.0))  # geometric, not arithmetic (504)
    assert ld.p_at(1250.0 - 1e-6, hp) == pytest.approx(1000.0, rel=1e-6)
    assert ld.p_at(1250.0, hp) == INF and ld.p_at(1299.99, hp) == INF
    # per mini-batch: epoch 387 batch 49 of 98 is a quarter of the way → 8 · 125^{1/4}
    assert ld.p_at(387 + 49 / 98, hp) == pytest.approx(8.0 * 125**0.25)


def test_lambda_schedule_edges_and_midpoint():
    hp = ld.Hparams()  # 0.1 → 0.0005 over the same window
    assert ld.lambda_at(0.0, hp) == 0.1 and ld.lambda_at(100.0, hp) == 0.1
    assert ld.lambda_at(675.0, hp) == pytest.approx(math.sqrt(0.1 * 0.0005))
    assert ld.lambda_at(1250.0, hp) == pytest.approx(0.0005)
    assert ld.lambda_at(1300.0, hp) == pytest.approx(0.0005)  # stays at λ_end while p = ∞


def test_hparams_defaults_and_paper_settings():
    assert ld.Hparams() == ld.paper_hparams("v2-cifar10-8/255")
    for name, setting in ld.PAPER.items():
        hp = ld.paper_hparams(name)
        assert hp.p_start < hp.p_end <= hp.epochs
        assert hp.scalar_std == setting["scalar_std"]
    mnist = ld.paper_hparams("v2-mnist-0.1")
    assert (mnist.depth, mnist.p_start, mnist.p_end, mnist.epochs) == (5, 25, 400, 450)
    assert ld.paper_hparams("v1-cifar10-8/255").loss == "v1"


@pytest.mark.parametrize(
    "field,value",
    [
        ("loss", "v3"),
        ("eps_train", 0.0),
        ("p0", 0.5),
        ("p1", 4.0),
        ("p_end", 50),
        ("epochs", 1000),
        ("lambda_end", 0.0),
        ("depth", 1),
    ],
)
def test_hparams_reject_bad_values(field, value):
    with pytest.raises(HparamError):
        ld.Hparams(**{field: value})


def test_v1_row_weight_decay_by_hand():
    """p = 2: plain decoupled decay w ← (1 − lr·wd)·w; p = ∞: only each row's largest |w| decays; finite p: the
    gradient of ½‖w_row‖_p², (|w|/‖w_row‖_p)^(p−2)·w."""
    from methods import linf_dist as L

    torch.manual_seed(0)
    model = L.LinfDistMLP((1, 2, 2), 3, depth=2, width=4, mean=[0.5], scalar_std=0.5)
    before = [layer.weight.detach().clone() for layer in model.layers]
    model.set_p(2.0)
    L.row_weight_decay(model, lr=0.1, wd=0.5)
    for layer, w in zip(model.layers, before):
        torch.testing.assert_close(layer.weight.detach(), w * (1 - 0.05))
    model.set_p(float("inf"))
    before = [layer.weight.detach().clone() for layer in model.layers]
    L.row_weight_decay(model, lr=0.1, wd=0.5)
    for layer, w in zip(model.layers, before):
        top = w.abs() == w.abs().amax(1, keepdim=True)
        torch.testing.assert_close(layer.weight.detach(), torch.where(top, w * 0.95, w))
    model.set_p(8.0)
    w = model.layers[0].weight.detach().clone()
    L.row_weight_decay(model, lr=0.1, wd=0.5)
    norm = w.abs().pow(8).sum(1, keepdim=True).pow(1 / 8)
    torch.testing.assert_close(model.layers[0].weight.detach(), w - 0.05 * (w.abs() / norm) ** 6 * w)


def test_v1_train_step_decays_between_backward_and_the_adam_step(monkeypatch):
    from methods import linf_dist as L

    order = []
    monkeypatch.setattr(L, "row_weight_decay", lambda model, lr, wd: order.append(("decay", lr, wd)))
    model = L.LinfDistMLP((1, 2, 2), 3, depth=2, width=4, mean=[0.5], scalar_std=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    real_step = optimizer.step
    optimizer.step = lambda *a, **k: (order.append("step"), real_step(*a, **k))[1]
    hp = L.Hparams(loss="v1", depth=2, width=4, scalar_std=0.5, row_weight_decay=5e-3, p_start=1, p_end=2, epochs=3)
    L.train_step(model, optimizer, torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1]), hp, 0.5)
    assert order == [("decay", 0.02, 5e-3), "step"]
    assert L.paper_hparams("v1-cifar10-8/255").row_weight_decay == 5e-3


def test_cosine_after_a_constant_phase():
    from methods.train.build import build_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = build_scheduler(opt, {"schedule": "cosine", "cosine_start": 2, "epochs": 6})
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(
        [1, 1, 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )


def test_v1_row_weight_decay_decays_the_output_bias_plainly():
    torch.manual_seed(0)
    model = ld.LinfDistMLP((1, 4, 4), 3, depth=3, width=8, mean=(0.5,), scalar_std=0.3)
    with torch.no_grad():
        model.layers[-1].bias.fill_(2.0)
    ld.row_weight_decay(model, lr=0.1, wd=0.5)
    assert torch.allclose(model.layers[-1].bias, torch.full((3,), 2.0 * (1 - 0.05)))
