"""ROAD (Rong et al. 2022): noisy linear imputation by conjugate gradients, and the MoRF / LeRF curves.

The imputation is checked against a direct sparse solve (scipy.sparse.linalg.spsolve) of the system
written here from the paper's definition (each removed pixel the weighted mean of its in-image neighbours,
1/6 for direct and 1/12 for diagonal ones), against Quantus's noisy_linear_imputation with the noise off,
and on images it must reproduce exactly (a constant, a linear ramp inside the image); ROAD itself against
Quantus's ROAD accuracy on the Fashion-MNIST fixture, for batch independence and for bad input.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_module

import tribute
from tribute.metrics import linear_imputation, noisy_linear_imputation, road


def spsolve_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The paper's system for one (C, H, W) image and (H, W) mask, built entry by entry and solved directly."""
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    c, h, w = image.shape
    unknowns = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    index = {p: k for k, p in enumerate(unknowns)}
    a = sparse.lil_matrix((len(unknowns), len(unknowns)))
    b = torch.zeros(len(unknowns), c, dtype=torch.float64)
    for k, (i, j) in enumerate(unknowns):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                    continue
                weight = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                a[k, k] += weight  # d_i: the weights of the in-image neighbours
                if removed[ii, jj]:
                    a[k, index[(ii, jj)]] -= weight
                else:
                    b[k] += weight * image[:, ii, jj].double()
    solution = torch.from_numpy(linalg.spsolve(sparse.csr_matrix(a), b.numpy())).view(len(unknowns), c)
    out = image.clone().double()
    for k, (i, j) in enumerate(unknowns):
        out[:, i, j] = solution[k]
    return out


def test_conjugate_gradients_agree_with_spsolve():
    """Random masks (60 %, touching the borders and corners), three channels, float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 11, 9, generator=g, dtype=torch.float64)
    removed = torch.rand(3, 1, 11, 9, generator=g) < 0.6
    removed[0, 0, :3, :3] = True  # a corner block
    ours = linear_imputation(x, removed)
    for n in range(3):
        assert torch.allclose(ours[n], spsolve_imputation(x[n], removed[n, 0]), rtol=0, atol=1e-9)
    assert torch.equal(ours[~removed.expand_as(x)], x[~removed.expand_as(x)])  # kept pixels untouched


def test_float32_agrees_to_its_tolerance():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 16, 16, generator=g)
    removed = torch.rand(2, 1, 16, 16, generator=g) < 0.8
    ours = linear_imputation(x, removed)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours[0].double(), spsolve_imputation(x[0], removed[0, 0]), atol=1e-5)


def test_agrees_with_quantus_imputation():
    """Quantus's noisy_linear_imputation (adapted from Rong et al.'s code) with noise=0, per channel."""
    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 2, 10, 12, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 1, 10, 12, generator=g) < 0.5
    ours = linear_imputation(x, removed)
    for n in range(2):
        idx = removed[n, 0].flatten().nonzero().flatten().numpy()
        for c in range(2):
            theirs = quantus_imputation(x[n, c:c + 1].numpy(), idx, noise=0.0)
            assert torch.allclose(ours[n, c:c + 1], torch.from_numpy(theirs), rtol=0, atol=1e-9)


def test_exact_on_constant_and_linear_images():
    """The stencil is a symmetric weighted mean: it reproduces constants everywhere, and a linear ramp
    a·i + b·j + c wherever no removed pixel has a neighbour outside the image."""
    h, w = 12, 10
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = (0.3 * i - 0.7 * j + 2.0).view(1, 1, h, w)
    inner = torch.zeros(1, 1, h, w, dtype=torch.bool)
    inner[..., 2:9, 3:8] = True
    inner[..., 5, 1] = True
    assert torch.allclose(linear_imputation(ramp, inner), ramp, atol=1e-9)
    g = torch.Generator().manual_seed(3)
    anywhere = torch.rand(1, 1, h, w, generator=g) < 0.9
    constant = torch.full((1, 2, h, w), 0.37, dtype=torch.float64)
    assert torch.allclose(linear_imputation(constant, anywhere), constant, atol=1e-9)


def test_noise_is_gaussian_seeded_and_per_sample():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 1, 32, 32, generator=g, dtype=torch.float64)
    removed = torch.rand(4, 1, 32, 32, generator=g) < 0.5
    clean = linear_imputation(x, removed)
    noisy = noisy_linear_imputation(x, removed, noise=0.05, seed=7)
    diff = (noisy - clean)[removed]
    assert abs(float(diff.std()) - 0.05) < 0.005 and abs(float(diff.mean())) < 0.005
    assert torch.equal(noisy[~removed], x[~removed])
    assert torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.05, seed=7))
    assert not torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.05, seed=8))
    alone = noisy_linear_imputation(x[2:3], removed[2:3], noise=0.05, seed=7)
    assert torch.allclose(alone[0], noisy[2], rtol=0, atol=1e-12)


def test_convergence_failure_is_an_error():
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    removed = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    removed[..., 0, 0] = False
    with pytest.raises(RuntimeError, match="max_iter"):
        linear_imputation(x, removed, max_iter=3)


# -- ROAD on the Fashion-MNIST fixture ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion():
    module = fixture_module("fashion")
    images, labels = module.samples()
    model = module.load()
    x, y = images[:32], labels[:32]
    return model, x, y, tribute.explain(model, x, "gradient", target=y)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_agrees_with_quantus_road_accuracy(fashion):
    """Quantus 0.6 ROAD (noise 0) reports, per percentage, the accuracy of the predictions on the imputed
    images; ours gives it per sample (``correct``), and its mean agrees.

    Where they differ: Quantus removes int(p · H · W) pixels (we round); it ranks with NumPy's unstable
    argsort (ties in arbitrary order; we break them by position, hence gradient maps, which have no ties); its
    noise comes from NumPy's global generator (ours is seeded per sample); and it imputes one image at a time
    by a direct sparse solve.
    """
    quantus = pytest.importorskip("quantus")
    model, x, y, a = fashion
    metric = quantus.ROAD(percentages=[25, 50, 75], noise=0.0, normalise=False, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    ours = road(model, x, a, y, fractions=(0.25, 0.5, 0.75), noise=0.0)
    accuracy = ours.correct.double().mean(0)
    assert accuracy[0] == (model(x).argmax(1) == y).double().mean()
    assert accuracy[1:].tolist() == pytest.approx([theirs[25], theirs[50], theirs[75]], abs=1e-12)


def test_curve_is_the_model_on_imputed_images(fashion):
    """Row (i, k) scores exactly noisy_linear_imputation of image i with its top-k pixels removed."""
    model, x, y, a = fashion
    r = road(model, x[:3], a[:3], y[:3], fractions=(0.5,), noise=0.0, score="logit")
    order = torch.sort(a[:3].flatten(1), dim=1, descending=True, stable=True).indices[:, :392]
    removed = torch.zeros(3, 784, dtype=torch.bool)
    removed.scatter_(1, order, True)
    filled = linear_imputation(x[:3], removed.view(3, 1, 28, 28))
    with torch.no_grad():
        expected = model(filled).gather(1, y[:3].view(-1, 1)).squeeze(1)
    assert torch.allclose(r.curve[:, 1], expected, atol=1e-5)


def test_batch_independence(fashion):
    """With seeded noise: a sample's curve is the same alone, shuffled among others and at any batch size."""
    _, x, y, a = fashion
    model = fixture_module("fashion").load().double()
    x, a = x[:5].double(), a[:5].double()
    kw = {"fractions": (0.2, 0.6), "seed": 11, "order": "lerf"}
    together = road(model, x, a, y[:5], batch_size=64, **kw)
    alone = road(model, x[3:4], a[3:4], y[3:4], batch_size=1, **kw)
    perm = torch.tensor([3, 1, 4, 0, 2])
    shuffled = road(model, x[perm], a[perm], y[:5][perm], batch_size=4, **kw)
    assert torch.allclose(alone.curve[0], together.curve[3], rtol=0, atol=1e-10)
    assert torch.allclose(shuffled.curve, together.curve[perm], rtol=0, atol=1e-10)


def test_integrated_gradients_morf_beats_random(fashion):
    """Sanity on the fixture: removing IG's top pixels (imputed) costs more than removing random ones.
    Measured: mean AOPC 0.389 against 0.227 (random uniform map), 25/32 images."""
    model, x, y, _ = fashion
    ig = tribute.explain(model, x, "integrated_gradients", target=y)
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    ours, theirs = road(model, x, ig, y, seed=0).score, road(model, x, rand, y, seed=0).score
    assert ours.mean() - theirs.mean() > 0.08


def test_bad_input_is_refused(fashion):
    model, x, y, a = fashion
    x, y, a = x[:2], y[:2], a[:2]
    for bad in ((0.0, 0.5), (0.5, 1.0), (1.2,), (0.6, 0.3)):
        with pytest.raises(ValueError, match="fractions"):
            road(model, x, a, y, fractions=bad)
    with pytest.raises(ValueError, match="shape"):
        road(model, x, a[:, :, :27], y)
    with pytest.raises(ValueError, match="NaN"):
        road(model, x, a * float("nan"), y)
    with pytest.raises(ValueError, match="no samples"):
        road(model, x[:0], a[:0], y[:0])
    with pytest.raises(ValueError, match="noise"):
        road(model, x, a, y, noise=-0.1)
    with pytest.raises(ValueError, match="order"):
        road(model, x, a, y, order="random")
    rgb = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="reduce"):  # pixels go whole: per-channel ranking makes no sense
        road(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 2)).double().eval(), rgb, rgb, 0,
             reduce=None)
    with pytest.raises(ValueError, match="keep at least one"):
        linear_imputation(x, torch.ones(2, 1, 28, 28, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed must be"):
        linear_imputation(x, torch.ones(2, 1, 28, 27, dtype=torch.bool))
