"""SAE losses, normalisation, activations and export folding against formulas written out here (autograd on the
plain formula, scipy's minimiser, numpy), and the schedule and selection rules by hand (the mutation tests of
medsae.sae and medsae.sae_training: `make mutate`). Small sizes, no training loop: each runs in well under a second."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize

from medsae.config import SAEConfig
from medsae.sae import (BatchTopKSAE, MatryoshkaSAE, Normaliser, ReLUSAE, TopKSAE, _aux_loss, code_dense,
                        geometric_median, topk_flat)
from medsae.sae_training import (dead_mask, folded_weights, lr_at, pareto_front, penalty_scales, resample_interval,
                                 select_sae, sweep_grid, total_steps)

torch.set_num_threads(1)


def median_ref(x: np.ndarray) -> np.ndarray:
    "The geometric median by scipy: argmin_y sum_i ||x_i - y||, from the coordinate-wise median."
    f = lambda y: np.sqrt(((x - y) ** 2).sum(1)).sum()
    g = lambda y: -((x - y) / np.maximum(np.sqrt(((x - y) ** 2).sum(1)), 1e-12)[:, None]).sum(0)
    return minimize(f, np.median(x, 0), jac=g, method="BFGS", options=dict(gtol=1e-10, maxiter=10_000)).x


def _set(sae, **w):
    with torch.no_grad():
        for k, v in w.items(): getattr(sae, k).copy_(torch.as_tensor(v, dtype=getattr(sae, k).dtype))
    return sae


# ---------------------------------------------------------------------------------------------------------------
# geometric median, normalisation, encode / decode
# ---------------------------------------------------------------------------------------------------------------

def test_geometric_median_equals_scipy():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(40, 5)), rng.normal(size=(6, 5)) * 0.3 + 25.0]      # a far cluster pulls the mean
    gm = geometric_median(torch.tensor(x)).numpy()
    want = median_ref(x)
    assert np.linalg.norm(gm - want) < 1e-4 * (1 + np.linalg.norm(want))
    assert np.linalg.norm(x.mean(0) - want) > 2                                      # not the mean
    few = geometric_median(torch.tensor(x), iters=1).numpy()                         # one step from the mean
    d = np.maximum(np.linalg.norm(x - x.mean(0), axis=1), 1e-6)
    assert np.allclose(few, (x / d[:, None]).sum(0) / (1 / d).sum())


def test_geometric_median_of_symmetric_points_and_a_point_on_the_data():
    sq = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(geometric_median(sq + 3), torch.tensor([3.0, 3.0], dtype=torch.float64), atol=1e-9)
    line = torch.tensor([[0.0, 0], [1, 0], [2, 0], [10, 0], [100, 0]], dtype=torch.float64)  # on a line: the median, 2
    assert torch.allclose(geometric_median(line, iters=2000, eps=1e-9), torch.tensor([2.0, 0.0], dtype=torch.float64), atol=1e-4)


def test_normaliser_centres_and_scales_to_d():
    x = torch.tensor([[1.0, 3.0, 6.0], [3.0, 3.0, 4.0], [2.0, 6.0, 5.0], [2.0, 0.0, 5.0]], dtype=torch.float64)
    n = Normaliser.fit(x)
    mean = np.array([2.0, 3.0, 5.0])
    sq = np.mean([2.0, 2.0, 9.0, 9.0])                                            # ||x - mean||^2 per row
    assert torch.allclose(n.mean, torch.tensor(mean, dtype=torch.float64)) and math.isclose(n.scale, math.sqrt(3 / sq))
    z = n(x)
    assert torch.allclose(z, (x - torch.tensor(mean)) * math.sqrt(3 / sq))
    assert math.isclose(float((z ** 2).sum(1).mean()), 3.0) and torch.allclose(z.mean(0), torch.zeros(3, dtype=z.dtype))
    assert n(x.float()).dtype == torch.float32 and n.mean.dtype == torch.float64      # the input's dtype out
    ident = Normaliser.fit(x, "published")
    assert torch.equal(ident.mean, torch.zeros(3)) and ident.scale == 1.0 and torch.equal(ident(x), x)
    assert torch.equal(Normaliser.identity(4).mean, torch.zeros(4)) and Normaliser.identity(4).scale == 1.0
    with pytest.raises(ValueError) as e: Normaliser.fit(x, "unit")
    assert str(e.value) == "normalisation 'unit': expected paper or published"


def _small_relu(l1=0.5):
    s = ReLUSAE(3, 4, l1=l1, kernel="dense").double()
    return _set(s, W_enc=[[1.0, 0, 0, -1], [0, 1, 0, 0.5], [0, 0, 1, 0]], b_enc=[0.1, -0.2, 0.0, 0.3],
                W_dec=[[0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0], [0.8, 0, 0.6]], b_dec=[0.5, -0.5, 0.25])


def test_encode_decode_and_raw_inputs_by_hand():
    s = _small_relu()
    s.set_normaliser(Normaliser(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0.5))
    assert torch.equal(s.norm_mean, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) and float(s.norm_scale) == 0.5
    x = torch.tensor([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    W_enc, b_enc = s.W_enc.detach().numpy(), s.b_enc.detach().numpy()
    W_dec, b_dec = s.W_dec.detach().numpy(), s.b_dec.detach().numpy()
    pre = (x.numpy() - b_dec) @ W_enc + b_enc
    with torch.no_grad():
        assert np.allclose(s.pre_acts(x).numpy(), pre)
        assert np.allclose(s.encode(x).numpy(), np.maximum(pre, 0))
        f = np.maximum(pre, 0)
        assert np.allclose(s.decode(torch.tensor(f)).numpy(), f @ W_dec + b_dec)
        x_hat, ff = s(x)
        assert np.allclose(ff.numpy(), f) and np.allclose(x_hat.numpy(), f @ W_dec + b_dec)
        raw = torch.tensor([[3.0, 6.0, 1.0]], dtype=torch.float64)
        z = (raw.numpy() - [1, 2, 3]) * 0.5
        assert np.allclose(s.normalise(raw).numpy(), z)
        assert np.allclose(s.encode_raw(raw).numpy(), np.maximum((z - b_dec) @ W_enc + b_enc, 0))


def test_init_from_data_puts_b_dec_at_the_geometric_median():
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(size=(30, 3)), rng.normal(size=(5, 3)) + 12]
    s = ReLUSAE(3, 6)
    s.init_from_data(torch.tensor(x, dtype=torch.float32))
    assert s.b_dec.dtype == torch.float32
    assert np.allclose(s.b_dec.detach().numpy(), median_ref(x), atol=1e-4)
    d = ReLUSAE(3, 6).double()
    d.init_from_data(torch.tensor(x))
    assert d.b_dec.dtype == torch.float64 and np.allclose(d.b_dec.detach().numpy(), median_ref(x), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# ReLU SAE: the loss and its hand-written backward against autograd on the formula
# ---------------------------------------------------------------------------------------------------------------

def relu_loss_ref(x, W_enc, b_enc, W_dec, b_dec, l1):
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    return ((x - x_hat) ** 2).sum(-1).mean() + l1 * f.sum(-1).mean(), f, x_hat


def _grads(sae, x, kernel, scale=2.5, l1_scale=1.0):
    sae.kernel = kernel
    for p in sae.parameters(): p.grad = None
    out = sae.loss(x, l1_scale=l1_scale)
    (scale * out["loss"]).backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_relu_loss_and_gradients_equal_autograd_on_the_formula(kernel):
    torch.manual_seed(0)
    s = ReLUSAE(5, 12, l1=0.7).double()
    _set(s, b_enc=torch.randn(12) * 0.5 - 0.2, b_dec=torch.randn(5) * 0.3)
    x = torch.randn(9, 5, dtype=torch.float64)
    out, g = _grads(s, x, kernel, scale=2.5, l1_scale=0.6)
    ps = [p.detach().clone().requires_grad_(True) for p in (s.W_enc, s.b_enc, s.W_dec, s.b_dec)]
    loss, f, x_hat = relu_loss_ref(x, *ps, 0.7 * 0.6)
    (2.5 * loss).backward()
    mse = ((x - x_hat) ** 2).sum(-1).mean()
    assert torch.allclose(out["loss"], loss) and torch.allclose(out["mse"], mse)
    assert torch.allclose(out["l1"], f.sum(-1).mean())
    assert torch.allclose(code_dense(out["f"]), f.detach()) and torch.allclose(out["x_hat"], x_hat.detach())
    for (n, _), p in zip([("W_enc", 0), ("b_enc", 0), ("W_dec", 0), ("b_dec", 0)], ps):
        assert torch.allclose(g[n], p.grad, atol=1e-10), n
    assert 0 < int((f > 0).sum()) < f.numel()                          # some latents on, some off: the mask matters
    if kernel == "sparse": assert torch.equal(out["fired"], (f > 0).any(0))


def test_relu_loss_by_hand():
    s = _small_relu(l1=0.5)
    _set(s, b_enc=[0.0, 0, 0, 0], b_dec=[0.0, 0, 0], W_dec=[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]],
         W_enc=[[1.0, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 0]])
    x = torch.tensor([[1.0, 2, -3], [0, 0, 0]], dtype=torch.float64)
    for kernel in ("dense", "sparse"):
        s.kernel = kernel
        out = s.loss(x)
        # f = [[1, 2, 0, 0], [0, 0, 0, 0]]; x_hat = [[1, 2, 0], 0]; squared errors 9 and 0; L1 3 and 0
        assert torch.allclose(out["mse"], torch.tensor(4.5, dtype=torch.float64)), kernel
        assert torch.allclose(out["l1"], torch.tensor(1.5, dtype=torch.float64)), kernel
        assert torch.allclose(out["loss"], torch.tensor(4.5 + 0.5 * 1.5, dtype=torch.float64)), kernel
        assert torch.allclose(s.loss(x, l1_scale=0.2)["loss"], torch.tensor(4.5 + 0.1 * 1.5, dtype=torch.float64))
    assert torch.allclose(s.loss_autograd(x), torch.tensor(4.5 + 0.75, dtype=torch.float64))
    assert torch.allclose(s.loss_autograd(x, l1_scale=2.0), torch.tensor(4.5 + 1.5, dtype=torch.float64))
    assert s.config() == dict(arch="relu", d=3, m=4, l1=0.5)
    assert torch.equal(s.activation(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0.0, 0.0, 2.0]))


def test_auto_kernel_switches_at_the_density_bound():
    "auto on CPU: sparse kernels while at most 10% of the code is active (the bound included)."
    s = ReLUSAE(10, 10, l1=0.1, kernel="auto").double()
    _set(s, W_enc=torch.eye(10), b_enc=torch.zeros(10), b_dec=torch.zeros(10))
    x = -torch.ones(10, 10, dtype=torch.float64)
    x[torch.arange(10), torch.arange(10)] = 1.0                        # one active latent per row: 10 of 100
    out = s.loss(x)
    assert "fired" in out and out["f"].layout == torch.sparse_csr
    x[0, 1] = 1.0                                                      # 11 of 100: dense
    assert "fired" not in s.loss(x)
    s.kernel = "sparse"
    assert "fired" in s.loss(-torch.ones(4, 10, dtype=torch.float64) + 2)   # sparse whatever the density
    # the dense fallback of `auto` reuses the encoder pass it already made: the same loss and gradients as `dense`
    _set(s, b_enc=torch.linspace(-0.5, 0.5, 10), W_enc=torch.eye(10) + 0.1)
    xa = torch.linspace(-1, 1, 70, dtype=torch.float64).reshape(7, 10)
    out_a, g_a = _grads(s, xa, "auto")
    out_d, g_d = _grads(s, xa, "dense")
    assert "fired" not in out_a and torch.allclose(out_a["loss"], out_d["loss"])
    for k in g_a: assert torch.allclose(g_a[k], g_d[k]), k


# ---------------------------------------------------------------------------------------------------------------
# TopK, AuxK, BatchTopK, Matryoshka
# ---------------------------------------------------------------------------------------------------------------

def test_topk_activation_keeps_the_k_largest_positive():
    s = TopKSAE(2, 5, k=2)
    pre = torch.tensor([[0.5, -1.0, 3.0, 2.0, 1.0], [-1.0, -2.0, 0.2, -0.5, -3.0]])
    assert torch.equal(s.activation(pre), torch.tensor([[0.0, 0, 3, 2, 0], [0, 0, 0.2, 0, 0]]))
    assert torch.equal(s.train_activation(pre), s.activation(pre))
    assert s.config() == dict(arch="topk", d=2, m=5, k=2, auxk_alpha=1 / 32, k_aux=1)
    assert TopKSAE(8, 5, k=2, k_aux=3).k_aux == 3 and TopKSAE(8, 5, k=2).k_aux == 4
    t = TopKSAE(3, 4, k=1)
    assert torch.equal(t.W_enc, t.W_dec.t()) and t.W_enc.is_contiguous()     # the encoder starts as the decoder's transpose


def aux_ref(x, x_hat, pre, dead, W_dec, k_aux):
    "AuxK written out with numpy: the k_aux largest relu(pre) among dead latents reconstruct the residual."
    x, x_hat, pre, W = (t.detach().numpy().astype(np.float64) for t in (x, x_hat, pre, W_dec))
    e = x - x_hat
    k = min(k_aux, int(dead.sum()))
    acts = np.maximum(pre, 0) * dead.numpy()
    z = np.zeros_like(acts)
    for b in range(len(acts)):
        top = np.argsort(-acts[b], kind="stable")[:k]
        z[b, top] = acts[b, top]
    e_hat = z @ W
    return ((e - e_hat) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()


def test_aux_loss_by_formula():
    torch.manual_seed(2)
    s = TopKSAE(4, 8, k=2, k_aux=3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    pre = torch.randn(6, 8, dtype=torch.float64)
    x_hat = x + 0.3 * torch.randn(6, 4, dtype=torch.float64)
    dead = torch.tensor([True, False, True, True, False, True, False, False])
    got = _aux_loss(s, x, x_hat, pre, dead, 3)
    assert np.isclose(float(got), aux_ref(x, x_hat, pre, dead, s.W_dec, 3))
    assert np.isclose(float(_aux_loss(s, x, x_hat, pre, dead, 10)), aux_ref(x, x_hat, pre, dead, s.W_dec, 4))
    W = torch.randn(8, 4, dtype=torch.float64)                         # a stacked sweep's member decoder, passed in
    assert np.isclose(float(_aux_loss(s, x, x_hat, pre, dead, 3, W_dec=W)), aux_ref(x, x_hat, pre, dead, W, 3))
    assert float(_aux_loss(s, x, x_hat, pre, torch.zeros(8, dtype=torch.bool), 3)) == 0.0
    assert float(_aux_loss(s, x, x_hat, pre, None, 3)) == 0.0
    same = x.clone()                                                   # a zero residual: the variance clamp
    assert np.isfinite(float(_aux_loss(s, same, same, pre, dead, 3)))


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_topk_loss_with_auxk_equals_the_formula(kernel):
    torch.manual_seed(3)
    s = TopKSAE(6, 40, k=3, auxk_alpha=0.25, k_aux=4, kernel=kernel).double()
    _set(s, b_enc=torch.randn(40) * 0.3, b_dec=torch.randn(6) * 0.2)
    x = torch.randn(7, 6, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool); dead[::3] = True
    for p in s.parameters(): p.grad = None
    out = s.loss(x, dead=dead)
    (1.5 * out["loss"]).backward()
    assert ("fired" in out) == (kernel == "sparse")
    ps = {n: p.detach().clone().requires_grad_(True) for n, p in s.named_parameters()}
    pre = (x - ps["b_dec"]) @ ps["W_enc"] + ps["b_enc"]
    v, i = torch.relu(pre).topk(3, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, i, v)
    x_hat = f @ ps["W_dec"] + ps["b_dec"]
    mse = ((x - x_hat) ** 2).sum(-1).mean()
    e = (x - x_hat).detach()
    va, ia = (torch.relu(pre) * dead).topk(4, dim=1)
    e_hat = torch.zeros_like(pre).scatter(1, ia, va) @ ps["W_dec"]
    aux = ((e - e_hat) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()
    loss = mse + 0.25 * aux
    (1.5 * loss).backward()
    assert torch.allclose(out["loss"], loss) and torch.allclose(out["mse"], mse) and torch.allclose(out["aux"], aux)
    assert torch.allclose(out["l1"], f.sum(-1).mean()) and torch.allclose(code_dense(out["f"]), f.detach())
    assert torch.allclose(out["x_hat"], x_hat.detach())
    for n, p in s.named_parameters(): assert torch.allclose(p.grad, ps[n].grad, atol=1e-10), (kernel, n)
    if kernel == "sparse": assert torch.equal(out["fired"], (f > 0).any(0))
    out0 = s.loss(x, dead=None)                                        # no dead latents: no AuxK term
    assert float(out0["aux"]) == 0.0 and torch.allclose(out0["loss"], mse.detach())
    # two dead latents that never fire: AuxK draws on nothing, whichever zeros topk returns; a small residual
    few = torch.zeros(40, dtype=torch.bool); few[[0, 1]] = True
    with torch.no_grad(): s.b_enc[[0, 1]] = -100.0
    xs = x * 0.01
    out2 = s.loss(xs, dead=few)
    e = (xs - out2["x_hat"]).detach()
    assert torch.allclose(out2["aux"], ((e ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean()))
    assert float(((e - e.mean(0)) ** 2).sum(-1).mean()) < 0.5                         # below 1: the clamp is 1e-8
    auto = TopKSAE(6, 40, k=3, auxk_alpha=0.25, k_aux=4, kernel="auto").double()       # auto on CPU: k / m <= 0.1
    auto.load_state_dict(s.state_dict())
    out3 = auto.loss(x, dead=dead)
    assert "fired" in out3 and torch.allclose(out3["loss"], s.loss(x, dead=dead)["loss"])


def test_topk_flat_equals_topk_on_every_branch():
    torch.manual_seed(0)
    a = torch.randn(5000)
    for n in (10, 100, 700):                                           # 8n > N takes a.topk directly at n = 700
        v, i = topk_flat(a, n); w, j = a.topk(n)
        assert torch.equal(v, w) and torch.equal(a[i], v) and set(i.tolist()) == set(j.tolist()), n
    b = torch.zeros(5000); b[::500] = torch.arange(1.0, 11.0)          # 10 positives: a sample too thin
    v, i = topk_flat(b, 40)
    assert torch.equal(v, b.topk(40).values) and torch.equal(b[i], v)
    c = torch.arange(4000.0).flip(0)                                   # the top values are the first ones
    v, i = topk_flat(c, 50, stride=7)
    assert torch.equal(i, torch.arange(50)) and torch.equal(v, c[:50])


def test_batchtopk_keeps_the_k_times_batch_largest_and_learns_its_threshold():
    s = BatchTopKSAE(2, 4, k=2, threshold_beta=0.75)
    pre = torch.tensor([[5.0, -1.0, 0.5, 4.0], [0.25, 3.0, 0.0, 2.0], [1.0, 0.0, -2.0, 0.75]])
    s.train()
    f = s.batch_activation(pre)                                        # the 6 largest of the batch
    assert torch.equal(f, torch.tensor([[5.0, 0, 0, 4], [0, 3, 0, 2], [1, 0, 0, 0.75]]))
    assert float(s.threshold) == 0.75                                  # first batch: the smallest kept value
    s.batch_activation(pre * 2)                                        # then an average: 0.75 * 0.75 + 0.25 * 1.5
    assert math.isclose(float(s.threshold), 0.9375)
    assert torch.equal(s.activation(pre), s.batch_activation(pre))     # training: BatchTopK
    assert torch.equal(s.train_activation(pre), s.batch_activation(pre))
    s.eval()
    th = float(s.threshold)
    assert torch.equal(s.activation(pre), torch.relu(pre) * (pre > th))   # inference: JumpReLU, batch-independent
    assert torch.equal(s.activation(pre)[:1], s.activation(pre[:1]))
    s.threshold.fill_(2.0)                                              # strictly above the threshold
    assert torch.equal(s.activation(pre), torch.tensor([[5.0, 0, 0, 4], [0, 3, 0, 0], [0, 0, 0, 0]]))
    fresh = BatchTopKSAE(2, 4, k=1).eval()                             # no threshold learnt yet: BatchTopK
    assert float(fresh.threshold) == -1.0
    assert torch.equal(fresh.activation(pre), torch.tensor([[5.0, 0, 0, 4], [0, 3, 0, 0], [0, 0, 0, 0]]))
    zero = BatchTopKSAE(2, 4, k=1).train()
    assert torch.equal(zero.batch_activation(-torch.ones(3, 4)), torch.zeros(3, 4))   # nothing positive: no code,
    assert float(zero.threshold) == -1.0                                               # and the threshold stays unset


def test_matryoshka_groups_and_prefix_losses_by_hand():
    with pytest.raises(ValueError) as e: MatryoshkaSAE(2, 8, fractions=(0.5, 0.25))
    assert str(e.value) == "matryoshka group fractions (0.5, 0.25) must sum to 1"
    assert MatryoshkaSAE(2, 16).group_sizes == [2, 2, 4, 8]
    assert MatryoshkaSAE(2, 10, fractions=(0.3, 0.3, 0.4)).group_sizes == [3, 3, 4]
    assert MatryoshkaSAE(2, 16).config()["group_sizes"] == [2, 2, 4, 8]
    assert MatryoshkaSAE(2, 16).config()["k"] == 64
    s = MatryoshkaSAE(4, 8, k=2, auxk_alpha=0.5, k_aux=1, fractions=(0.25, 0.25, 0.5)).double()
    assert s.group_sizes == [2, 2, 4] and s.k_aux == 1
    W_enc = torch.zeros(4, 8); W_enc[0, 0] = W_enc[1, 1] = W_enc[2, 2] = W_enc[3, 4] = 1.0    # latent 3 never fires
    W_dec = torch.zeros(8, 4); W_dec[0, 0] = W_dec[1, 1] = W_dec[2, 2] = W_dec[3, 3] = W_dec[4, 3] = 1.0
    W_dec[5:, 0] = 1.0
    _set(s, W_enc=W_enc, b_enc=torch.zeros(8), b_dec=torch.tensor([0.5, 0.0, 0.0, 0.0]), W_dec=W_dec)
    s.train()
    x = torch.tensor([[2.5, 1.0, 0.0, 0.0], [0.5, 3.0, 0.0, 0.0], [0.5, 0.0, 4.0, 2.0]], dtype=torch.float64)
    out = s.loss(x)
    # pre = x - b_dec on latents 0, 1, 2 and 4 (from dimension 3); BatchTopK keeps k x B = 6: all five positives
    # prefix 1 (latents 0-1): row 3 misses 4 and 2 -> (16 + 4) / 3; prefix 2 (+ latent 2): misses 2 -> 4 / 3; all: 0
    assert out["prefix_mse"] == pytest.approx([20 / 3, 4 / 3, 0.0]) and float(out["mse"]) == 0.0
    assert float(out["aux"]) == 0.0 and float(out["loss"]) == pytest.approx((20 / 3 + 4 / 3) / 3)
    f = torch.zeros(3, 8, dtype=torch.float64); f[0, 0], f[0, 1], f[1, 1], f[2, 2], f[2, 4] = 2, 1, 3, 4, 2
    assert torch.equal(out["f"], f) and float(out["l1"]) == 4.0 and torch.allclose(out["x_hat"], x)
    x2 = x.clone(); x2[0, 1] = -1.0                                     # a negative coordinate: a residual
    dead = torch.tensor([False, False, False, True, False, True, True, True])
    out2 = s.loss(x2, dead=dead)
    pre2 = (x2 - s.b_dec) @ s.W_enc + s.b_enc
    assert float(out2["aux"]) == pytest.approx(aux_ref(x2, out2["x_hat"], pre2, dead, s.W_dec, 1)) and float(out2["aux"]) > 0
    l2 = [float(v) for v in out2["prefix_mse"]]
    assert float(out2["loss"]) == pytest.approx(sum(l2) / 3 + 0.5 * float(out2["aux"]))


# ---------------------------------------------------------------------------------------------------------------
# folding the normalisation into the exported weights
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_folded_weights_act_on_raw_inputs(arch):
    torch.manual_seed(4)
    kw = dict(l1=0.1) if arch == "relu" else dict(k=3)
    s = {"relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE}[arch](5, 12, **kw)
    _set(s, b_enc=torch.randn(12) * 0.2, b_dec=torch.randn(5))
    if arch == "batchtopk": s.threshold.fill_(0.3)
    s.set_normaliser(Normaliser(torch.randn(5), 1.7))
    s.eval()
    w = {k: v.numpy().astype(np.float64) for k, v in folded_weights(s).items()}
    assert set(w) == ({"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} if arch == "batchtopk" else
                      {"W_enc", "b_enc", "W_dec", "b_dec"})
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in folded_weights(s).values())
    raw = torch.randn(8, 5) * 2 + 1
    pre = (raw.numpy() - w["b_dec"]) @ w["W_enc"] + w["b_enc"]          # SAELens' forward on raw inputs
    with torch.no_grad():
        z = (raw - s.norm_mean) * s.norm_scale
        f = s.encode(z)
        ours_pre = s.pre_acts(z).numpy()
        ours = (s.decode(f) / s.norm_scale + s.norm_mean).numpy()
    assert np.allclose(pre, ours_pre, atol=1e-5)
    assert np.allclose(f.numpy() @ w["W_dec"] + w["b_dec"], ours, atol=1e-5)
    if arch == "batchtopk": assert np.allclose(w["threshold"], 0.3) and w["threshold"].shape == (12,)


# ---------------------------------------------------------------------------------------------------------------
# schedule, dead latents, penalty scales, sweep selection
# ---------------------------------------------------------------------------------------------------------------

def test_lr_schedule_by_hand():
    c = SAEConfig(lr=1.0, warmup_steps=4, decay_start=0.5)
    assert [lr_at(s, 20, c) for s in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert [lr_at(s, 20, c) for s in (10, 15, 19)] == [1.0, 0.5, 0.1]   # decay from step 10: (20 - s) / 10
    assert lr_at(25, 20, c) == 0.0
    assert lr_at(5, 20, SAEConfig(lr=0.01)) == 0.01                      # no warm-up, no decay
    assert lr_at(20, 20, SAEConfig(lr=0.01)) == lr_at(25, 20, SAEConfig(lr=0.01)) == 0.01   # decay_start 1: never
    c2 = SAEConfig(lr=2.0, warmup_steps=10, decay_start=0.1)
    assert math.isclose(lr_at(3, 20, c2), 2.0 * 0.4 * (20 - 3) / 18)       # warm-up and decay at once


def test_steps_intervals_and_dead_latents_by_hand():
    c = SAEConfig(batch_size=100, epochs=3)
    assert total_steps(1050, c) == 30 and total_steps(50, c) == 3
    assert total_steps(1050, c.model_copy(update=dict(max_steps=7))) == 7
    assert resample_interval(1050, SAEConfig(batch_size=100, resample_every=25)) == 25
    assert resample_interval(1050, SAEConfig(batch_size=100, resample_every=7, resample_epochs=2.5)) == 25
    assert resample_interval(1050, SAEConfig(batch_size=100, resample_epochs=0.26)) == 3
    assert resample_interval(50, SAEConfig(batch_size=100, resample_epochs=0.1)) == 1
    assert resample_interval(50, SAEConfig(batch_size=100, resample_epochs=1.0)) == 1   # a partial batch: one step
    since = torch.tensor([0, 1000, 1001, 1099, 1100, 5000])
    pub = SAEConfig(batch_size=100, resample_epochs=2.0, resample_rule="published", dead_window=10)
    # interval 2 x 10 = 20 steps; dead when silent for more than 20 // 2 x 100 = 1000 samples
    assert dead_mask(since, 1000, pub).tolist() == [False, False, True, True, True, True]
    ours = SAEConfig(batch_size=100, dead_window=1099)
    assert dead_mask(since, 1000, ours).tolist() == [False, False, False, True, True, True]
    odd = SAEConfig(batch_size=100, resample_epochs=2.1, resample_rule="published")  # 21 steps: 21 // 2 = 10
    assert dead_mask(torch.tensor([1000, 1001, 1049]), 1000, odd).tolist() == [False, True, True]
    never = SAEConfig(batch_size=100, resample_rule="published", dead_window=5000)   # published, never resampling
    assert dead_mask(since, 1000, never).tolist() == [False] * 5 + [True]


def test_penalty_scales_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 5.0, 2.0], [2.0, -1.0, 2.0]])
    s = math.sqrt(3 / 5.5)
    p = penalty_scales(x, SAEConfig(l1=2.0))
    assert p == dict(normalise="paper", scale_s=round(s, 6), l1_paper_scale=2.0, l1_published_scale=pytest.approx(2.0 / s))
    q = penalty_scales(x, SAEConfig(l1=3e-5, normalise="published"))
    assert q["normalise"] == "published" and q["l1_paper_scale"] == pytest.approx(3e-5 * s)
    assert q["l1_published_scale"] == pytest.approx(3e-5)
    assert penalty_scales(x * 1.1, SAEConfig())["scale_s"] == 0.671408          # sqrt(3 / 6.655), to 6 decimals


def test_sweep_grid_selection_and_pareto_front_by_hand():
    assert sweep_grid(SAEConfig(arch="relu", sweep_expansion=[2, 4], sweep_l1=[1.0, 3.0])) == [
        {"expansion": 2, "l1": 1.0}, {"expansion": 2, "l1": 3.0}, {"expansion": 4, "l1": 1.0}, {"expansion": 4, "l1": 3.0}]
    assert sweep_grid(SAEConfig(arch="topk", sweep_expansion=[8], sweep_k=[16, 32])) == [
        {"expansion": 8, "k": 16}, {"expansion": 8, "k": 32}]
    t = pd.DataFrame({"l0": [10.0, 20.0, 20.0, 40.0, 5.0], "fve": [0.5, 0.7, 0.6, 0.9, 0.2]},
                     index=["a", "b", "c", "d", "e"])
    assert select_sae(t, 20) == "b" and select_sae(t, 19.9) == "a" and select_sae(t, 100) == "d"
    assert select_sae(t, 4) == "e"                                       # none meets the target: the sparsest
    assert list(pareto_front(t)) == ["a", "b", "d", "e"]                 # c: same L0 as b, lower FVE
    t2 = pd.DataFrame({"l0": [10.0, 10.0], "fve": [0.5, 0.5]}, index=["x", "y"])
    assert list(pareto_front(t2)) == ["x", "y"]                          # equal rows do not dominate each other
    t3 = pd.DataFrame({"l0": [10.0, 20.0], "fve": [0.5, 0.5]}, index=["x", "y"])
    assert list(pareto_front(t3)) == ["x"]                               # as good, sparser: dominates


def test_batch_activation_stays_on_the_input_device():
    "BatchTopK's code is made on the device of its pre-activations (a meta tensor here: no data, devices checked)."
    s = BatchTopKSAE(4, 8, k=2).eval()
    out = s.batch_activation(torch.randn(2, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 8)


def test_topk_codes_of_leading_dimensions_are_per_row():
    "TopK acts on the last (latent) dimension: a (2, 3, d) input gives the codes of its six rows, by hand."
    torch.manual_seed(0)
    s = TopKSAE(4, 8, k=2)
    x = torch.randn(2, 3, 4)
    f = s.encode(x)
    pre = s.pre_acts(x.reshape(6, 4)).relu()
    want = torch.zeros(6, 8)
    for r in range(6):
        top = pre[r].argsort(descending=True)[:2]
        want[r, top] = pre[r, top]
    assert f.shape == (2, 3, 8) and torch.allclose(f.reshape(6, 8), want)
