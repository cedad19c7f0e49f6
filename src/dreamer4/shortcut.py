"""Shortcut forcing (paper §3.2, eq. 6–8) and the autoregressive shortcut sampler.

Training (`shortcut_loss`). Every frame gets its own signal level τ and step size d (diffusion
forcing), z̃ = (1 − τ) z0 + τ z1 with z0 ~ N(0, I), and the network predicts the clean frame,
ẑ1 = f(z̃, τ, d, a) (x-prediction). Frames with d = d_min = 1/k_max get the flow term
||ẑ1 − z1||²; frames with d > d_min get the bootstrap term, which asks one step of size d to
match two steps of size d/2 taken by the same network:

    b'  = (f(z̃, τ, d/2) − z̃) / (1 − τ)              z' = z̃ + b' · d/2
    b'' = (f(z', τ + d/2, d/2) − z') / (1 − (τ + d/2))
    L   = (1 − τ)² · ||(ẑ1 − z̃)/(1 − τ) − sg(b' + b'')/2||²

(x-predictions are turned into velocities; the (1 − τ)² brings the v-space error back to the
x-space scale of the flow term). Each frame is weighted by the ramp w(τ) = 0.9 τ + 0.1 (eq. 8).

Sampling (`generate`). Frames are generated one at a time: start from noise, take `steps`
shortcut steps of size d = 1/steps (x-prediction → velocity → Euler step), then feed the
finished frame once more, lightly noised, to commit it to the KV cache as context.

Choices the paper leaves open (fields of `ShortcutConfig`, defaults and why):

- `bootstrap_fraction = 0.25`: probability that a frame gets d > d_min, drawn *per frame*, as
  eq. 7 is written (each frame its own (τ, d)). The paper is silent on the share; 1/4 is the
  shortcut-models default (`bootstrap_every = 4`). An earlier version drew it per row (whole
  sequences bootstrap or flow), so the step size used at inference, d = 1/4, met about 4% of
  frames and never with the context the sampler gives it (see `sampler_rows`); K = 4 rollouts
  then fell far below K = k_max. Per frame, almost every row holds a bootstrap frame, so the
  two extra no-grad passes run on nearly every row: a step costs about 1.6× a flow-only step.
- `inference_steps = 4`, `inference_share = 0.5`: the K the sampler runs at (paper: K = 4,
  d = 1/4) and the share of bootstrap frames that get exactly that step size; the others draw d
  uniformly over the remaining exponents {1, 1/2, …, 2/k_max} (d_min excluded). Uniform over
  all exponents gives d = 1/4 one share in log2(k_max) − 1 although it is the only one the agent
  and play ever use; the finer ones still get trained, since d = 1/4 bootstraps from them.
- `sampler_rows = 0.25`: probability that a row is laid out as the sampler sees it: every frame
  but the last at the context level (τ_ctx, d_min, noised to τ_ctx), the last with its own
  (τ, d). Diffusion forcing alone gives context frames random levels, so the labels of a real
  rollout's context (τ_ctx, d_min) otherwise appear together only by chance. Those context
  frames are ordinary flow frames (a commit pass is exactly one).
- `ramp_on_bootstrap = True`: eq. 8 reads as weighting the whole loss, so w(τ) multiplies both
  terms (as in nicklashansen/dreamer4; lucidrains/dreamer4 ramps the flow term only). The
  paper's reason for the ramp (little signal at low τ) applies to the flow term at least.
- `context_noise = 0.1`: the sampler corrupts its context to "signal level τ_ctx = 0.1"
  (§3.2). Read literally under the paper's convention (τ = signal) that is 90% noise, which
  contradicts "slightly"; we read it as 10% noise, like every reimplementation checked. The
  level is rounded to the τ grid, τ_ctx = round((1 − 0.1) k_max)/k_max (58/64 = 0.906 for
  k_max = 64), and the context is noised *with that same τ_ctx*, z_ctx = (1 − τ_ctx) ε +
  τ_ctx z, so its label matches its noise exactly as in training. Context frames are labelled
  d = d_min (the step size of flow-trained frames). 0 gives clean context, which the model then
  sees as its last trained level 1 − 1/k_max (`dynamics.tau_index`).
- `tau_clamp = 1e-4`: 1 − τ is clamped to at least this before dividing. On the training grid
  1 − τ ≥ d_min anyway (τ ≤ 1 − d, τ + d/2 ≤ 1 − d/2), so the clamp only guards odd inputs.
- `rms_decay = 0.99`: decay of the running RMS that normalises each loss term (§3, same
  estimator as the tokenizer's, `nn.norm.RunningRMS`).

Other decisions:

- Bootstrap frames never draw d_min, so `bootstrap_fraction` is exactly the share of frames
  with bootstrap targets (d_min there would only silently add flow frames).
- The flow term is computed on d_min frames only (eq. 7's case split; lucidrains also applies
  it to bootstrap rows). Bootstrap targets come from the online weights under `no_grad` (the
  paper mentions no EMA target network; both PyTorch reimplementations do the same).
- Each term is the mean over elements per frame, weighted by w(τ), then the mean over the
  frames that have that term; a term with no frames in the batch is 0 and does not update its
  running RMS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from dreamer4.nn.norm import RunningRMS

if TYPE_CHECKING:  # annotations only: dynamics.py imports this module's ShortcutConfig
    from dreamer4.dynamics import Dynamics


@dataclass(frozen=True)
class ShortcutConfig:
    bootstrap_fraction: float = 0.25  # frames with d > d_min (shortcut-models default; see above)
    inference_steps: int = 4  # K of the sampler at play and imagination time (paper: 4)
    inference_share: float = 0.5  # of bootstrap frames, those with d = 1/inference_steps
    sampler_rows: float = 0.25  # rows with the sampler's context before their last frame
    ramp_on_bootstrap: bool = True  # w(τ) on both terms (eq. 8 read as weighting the loss)
    context_noise: float = 0.1  # sampler: 10% noise on the context (the paper's τ_ctx, see above)
    tau_clamp: float = 1e-4  # lower bound on 1 − τ before dividing
    rms_decay: float = 0.99  # running-RMS loss normalisation (as the tokenizer)

    def __post_init__(self) -> None:
        if not 0.0 <= self.bootstrap_fraction <= 1.0:
            raise ValueError(f"bootstrap_fraction must be in [0, 1], got {self.bootstrap_fraction}")
        for name in ("inference_share", "sampler_rows"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        steps = self.inference_steps
        if steps < 1 or steps & (steps - 1):
            raise ValueError(f"inference_steps must be a power of two, got {steps}")
        if not 0.0 <= self.context_noise <= 1.0:
            raise ValueError(f"context_noise must be in [0, 1], got {self.context_noise}")
        if self.tau_clamp <= 0:
            raise ValueError(f"tau_clamp must be > 0, got {self.tau_clamp}")


class Denoiser(Protocol):
    """What the loss needs of a model: `Dynamics.forward`'s call signature."""

    def __call__(
        self,
        z: Tensor,
        tau: Tensor,
        d: Tensor,
        actions: dict[str, Tensor] | None,
        independent: Tensor | None = None,
    ) -> Tensor: ...


def _check_k_max(k_max: int) -> None:
    if k_max < 1 or k_max & (k_max - 1):
        raise ValueError(f"k_max must be a power of two, got {k_max}")


def _device(generator: torch.Generator | None) -> torch.device:
    """Where to draw: a generator only serves its own device."""
    return torch.device("cpu") if generator is None else generator.device


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn_like(x)
    z = torch.randn(x.shape, generator=generator, device=generator.device)
    return z.to(x.device, x.dtype)


def sample_tau_d(
    b: int,
    t: int,
    k_max: int,
    cfg: ShortcutConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-frame (τ, d), each (B, T) float32 (diffusion forcing: every frame its own level).

    Each frame is a bootstrap frame with probability `cfg.bootstrap_fraction`: d = 1/K for
    K = `cfg.inference_steps` with probability `cfg.inference_share`, else 2^-j with j uniform
    over the other exponents in {0, …, log2 k_max − 1} (d_min excluded). Other frames: d = d_min.
    τ is uniform on the multiples of d in [0, 1 − d]. Then a `cfg.sampler_rows` share of rows
    gets the sampler's context, (τ_ctx, d_min), on every frame but the last.
    """
    _check_k_max(k_max)
    g, at = generator, _device(generator)
    levels = k_max.bit_length() - 1  # log2 k_max
    exponent = torch.full((b, t), levels, dtype=torch.long, device=at)
    if levels > 0:
        boot = torch.rand(b, t, generator=g, device=at) < cfg.bootstrap_fraction
        target = cfg.inference_steps.bit_length() - 1  # log2 K
        weights = torch.ones(levels, device=at)
        if target < levels:  # K < k_max: d = 1/K is a bootstrap step size
            others = levels - 1
            weights[:] = (1 - cfg.inference_share) / others if others else 0.0
            weights[target] = cfg.inference_share if others else 1.0
        drawn = torch.multinomial(weights, b * t, replacement=True, generator=g).view(b, t)
        exponent = torch.where(boot, drawn, exponent)
    d = torch.exp2(-exponent.float())
    # τ index uniform in {0, …, 1/d − 1}: floor(u / d), u ~ U[0, 1)
    count = torch.exp2(exponent.float())
    index = torch.floor(torch.rand(b, t, generator=g, device=at) * count)
    tau = torch.minimum(index, count - 1) * d
    if t > 1 and cfg.sampler_rows > 0:
        rows = torch.rand(b, generator=g, device=at) < cfg.sampler_rows
        tau[rows, :-1] = context_level(cfg.context_noise, k_max)
        d[rows, :-1] = 1.0 / k_max
    return tau.to(device), d.to(device)


def ramp(tau: Tensor) -> Tensor:
    """w(τ) = 0.9 τ + 0.1 (eq. 8): less weight on nearly-pure-noise frames."""
    return 0.9 * tau + 0.1


def loss_norms(decay: float = 0.99) -> nn.ModuleDict:
    """The running-RMS normaliser of the shortcut loss; keep it in the trained module so its
    buffers are checkpointed, and pass it to `shortcut_loss(norms=...)`."""
    return nn.ModuleDict({"flow": RunningRMS(decay)})


def shortcut_loss(
    model: Denoiser,
    z1: Tensor,
    actions: dict[str, Tensor] | None,
    cfg: ShortcutConfig,
    k_max: int,
    independent: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
    tau: Tensor | None = None,
    d: Tensor | None = None,
    norms: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Shortcut-forcing loss (eq. 6–8) of clean latents z1 (B, T, N_b, D_b).

    noise, tau, d: z0 and the per-frame (τ, d) to use instead of sampling them (tests, custom
    schedules). norms: callables for "flow" and "bootstrap" (e.g. `loss_norms()`); "loss" is
    then the sum of the normalised terms, else the plain sum. Returns scalars "flow",
    "bootstrap" (un-normalised, for logging and for callers that normalise themselves), "loss",
    and the frame counts "flow_frames", "bootstrap_frames".
    """
    _check_k_max(k_max)
    b, t = z1.shape[:2]
    d_min = 1.0 / k_max
    if (tau is None) != (d is None):
        raise ValueError("pass both tau and d, or neither")
    if tau is None or d is None:
        tau, d = sample_tau_d(b, t, k_max, cfg, generator, z1.device)
    tau, d = tau.to(z1.device, torch.float32), d.to(z1.device, torch.float32)
    z0 = randn_like(z1, generator) if noise is None else noise.to(z1)
    tau_ = tau[..., None, None].to(z1.dtype)
    zt = (1 - tau_) * z0 + tau_ * z1
    pred = model(zt, tau, d, actions, independent=independent)

    boot = d > d_min * 1.5  # (B, T) bootstrap frames (d is a power of two; 1.5 absorbs rounding)
    flow_frame = (pred.float() - z1.float()).pow(2).mean((-2, -1))
    boot_frame = torch.zeros_like(flow_frame)
    rows = boot.any(1).nonzero().squeeze(1)
    if len(rows):
        boot_frame = boot_frame.index_put(
            (rows,),
            _bootstrap_error(
                model,
                zt[rows],
                pred[rows],
                tau[rows],
                d[rows],
                boot[rows],
                None if actions is None else {k: v[rows] for k, v in actions.items()},
                None if independent is None else independent[rows],
                cfg.tau_clamp,
            ),
        )
    weight = ramp(tau)
    flow_mask, boot_mask = (~boot).float(), boot.float()
    flow = (flow_frame * weight * flow_mask).sum() / flow_mask.sum().clamp(min=1)
    boot_weight = weight if cfg.ramp_on_bootstrap else torch.ones_like(weight)
    bootstrap = (boot_frame * boot_weight * boot_mask).sum() / boot_mask.sum().clamp(min=1)
    n_flow, n_boot = int(flow_mask.sum().item()), int(boot_mask.sum().item())
    if norms is None:
        loss = flow + bootstrap
    else:  # one scale for both terms (see `shared_norm`); an absent term must not update it
        norm = norms["flow"]
        flow_n = norm(flow) if n_flow else flow
        scale = norm.mean_square.clamp(min=1e-12).sqrt() if int(norm.count) else 1.0
        loss = flow_n + bootstrap / scale
    return {
        "loss": loss,
        "flow": flow,
        "bootstrap": bootstrap,
        "flow_frames": torch.tensor(n_flow),
        "bootstrap_frames": torch.tensor(n_boot),
    }


def _bootstrap_error(
    model: Denoiser,
    zt: Tensor,
    pred: Tensor,
    tau: Tensor,
    d: Tensor,
    boot: Tensor,
    actions: dict[str, Tensor] | None,
    independent: Tensor | None,
    clamp: float,
) -> Tensor:
    """Per-frame (1 − τ)² ||v̂ − sg(b' + b'')/2||² (mean over elements) of rows with bootstrap
    frames. Their flow frames, if any, keep (z̃, τ, d) in both half-step passes: they are only
    context there, and their error is ignored by the caller."""
    half = torch.where(boot, d / 2, d)
    half_ = half[..., None, None].to(zt.dtype)
    gap = (1 - tau).clamp(min=clamp)[..., None, None].to(zt.dtype)
    with torch.no_grad():
        b1 = (model(zt, tau, half, actions, independent=independent) - zt) / gap
        z_mid = torch.where(boot[..., None, None], zt + b1 * half_, zt)
        tau_mid = torch.where(boot, tau + half, tau)
        gap_mid = (1 - tau_mid).clamp(min=clamp)[..., None, None].to(zt.dtype)
        b2 = (model(z_mid, tau_mid, half, actions, independent=independent) - z_mid) / gap_mid
        target = (b1 + b2) / 2
    v_hat = (pred - zt) / gap
    return (gap.float() ** 2 * (v_hat.float() - target.float()).pow(2)).mean((-2, -1))


# -- sampling ----------------------------------------------------------------------------------


def context_level(context_noise: float, k_max: int) -> float:
    """τ_ctx: 1 − context_noise rounded to the τ grid (its label and its actual noise)."""
    return round((1.0 - context_noise) * k_max) / k_max


def _check_sampling(
    context: Tensor,
    actions: dict[str, Tensor] | None,
    horizon: int,
    steps: int,
    k_max: int,
    context_window: int | None,
) -> None:
    _check_k_max(k_max)
    if steps < 1 or steps & (steps - 1) or steps > k_max:
        raise ValueError(f"steps must be a power of two <= k_max={k_max}, got {steps}")
    if horizon < 0 or (context_window is not None and context_window < 0):
        raise ValueError("horizon and context_window must be >= 0")
    b, c = context.shape[:2]
    for name, value in (actions or {}).items():
        if value.shape[0] != b or value.shape[1] < c + horizon:
            raise ValueError(
                f"actions[{name!r}] must be (B, C + horizon) = {(b, c + horizon)}, "
                f"got {tuple(value.shape)}"
            )


def _slice(actions: dict[str, Tensor] | None, lo: int, hi: int) -> dict[str, Tensor] | None:
    return None if actions is None else {k: v[:, lo:hi] for k, v in actions.items()}


def constant(b: int, t: int, value: float, like: Tensor) -> Tensor:
    """A (B, T) float32 label (τ or d) of one value, on `like`'s device."""
    return torch.full((b, t), value, device=like.device, dtype=torch.float32)


def _euler(x: Tensor, pred: Tensor, tau: float, d: float, clamp: float) -> Tensor:
    """One shortcut step: x-prediction → velocity (pred − x)/(1 − τ) → x + v · d."""
    return x + (pred - x) / max(1.0 - tau, clamp) * d


def denoise(
    predict: Callable[[Tensor, float, float], Tensor], noise: Tensor, steps: int, clamp: float
) -> Tensor:
    """A new frame from noise in `steps` shortcut steps of d = 1/steps: predict(x, τ, d) gives
    the x-prediction of the current iterate (callers run the model against their KV cache and
    roll it back)."""
    x, d = noise, 1.0 / steps
    for k in range(steps):
        x = _euler(x, predict(x, k * d, d), k * d, d, clamp)
    return x


def noise_context(x: Tensor, tau_ctx: float, generator: torch.Generator | None) -> Tensor:
    """A frame as context: noised to the signal level it is labelled with, τ_ctx."""
    return (1 - tau_ctx) * randn_like(x, generator) + tau_ctx * x


def as_context(
    x: Tensor, context_noise: float, k_max: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Frames x (B, T, …) as the sampler's context — noised to τ_ctx, labelled (τ_ctx, d_min):
    the inputs of a commit pass, and what the agent's heads read (training and acting)."""
    tau_ctx, (b, t) = context_level(context_noise, k_max), x.shape[:2]
    return (
        noise_context(x, tau_ctx, generator),
        constant(b, t, tau_ctx, x),
        constant(b, t, 1.0 / k_max, x),
    )


class FrameSampler:
    """`generate` one frame at a time, for a caller that chooses each action after seeing the
    last frame (a person at the keys, a policy): `start(context, actions)` once, then
    `next(actions)` per frame, or `frame` and `commit` separately.

    The noised context is fed once into a KV cache. Each new frame starts from noise and takes
    `steps` shortcut steps of d = 1/steps, each a forward of the one new step against the cache,
    rolled back with `cache.truncate` after the pass; the finished frame, noised to the context
    level, is then fed once more to commit it. So a frame costs steps + 1 one-step passes
    whatever the length of the context. context_window: keep at most this many past frames
    (cache cropped before each new frame; None = all). k_max: default `model.cfg.k_max`.
    """

    def __init__(
        self,
        model: Dynamics,
        steps: int = 4,
        cfg: ShortcutConfig = ShortcutConfig(),
        k_max: int | None = None,
        generator: torch.Generator | None = None,
        context_window: int | None = None,
    ) -> None:
        self.model, self.steps, self.cfg = model, steps, cfg
        self.k_max = model.cfg.k_max if k_max is None else k_max
        self.generator, self.context_window = generator, context_window
        self.cache = model.new_cache()
        self.like: Tensor | None = None

    @torch.no_grad()
    def start(self, context: Tensor, actions: dict[str, Tensor] | None) -> None:
        """Forget the past; then context (B, C, N_b, D_b), C ≥ 0, with actions name → (B, C)."""
        self.cache = self.model.new_cache()
        self.like = context
        if context.shape[1]:
            self.commit(context, actions)

    @torch.no_grad()
    def commit(self, x: Tensor, actions: dict[str, Tensor] | None) -> None:
        """Append frames x (B, T, N_b, D_b), noised to the context level, to the cache."""
        inputs = as_context(x, self.cfg.context_noise, self.k_max, self.generator)
        self.model(*inputs, actions, cache=self.cache)

    @torch.no_grad()
    def frame(self, actions: dict[str, Tensor] | None) -> Tensor:
        """The next frame (B, 1, N_b, D_b) given the actions leading into it (name → (B, 1));
        not committed."""
        if self.like is None:
            raise RuntimeError("FrameSampler.frame before start")
        model, cache = self.model, self.cache
        if self.context_window is not None:
            cache.crop(self.context_window)
        b, length = self.like.shape[0], cache.length

        def predict(x: Tensor, tau: float, d: float) -> Tensor:
            pred = model(x, constant(b, 1, tau, x), constant(b, 1, d, x), actions, cache=cache)
            cache.truncate(length)
            return pred

        like = self.like[:, :1] if self.like.shape[1] else _empty_frame(model, b, self.like)
        return denoise(predict, randn_like(like, self.generator), self.steps, self.cfg.tau_clamp)

    def next(self, actions: dict[str, Tensor] | None) -> Tensor:
        """`frame`, then `commit` it: the next frame, now part of the context."""
        x = self.frame(actions)
        self.commit(x, actions)
        return x


@torch.no_grad()
def generate(
    model: Dynamics,
    context: Tensor,
    actions: dict[str, Tensor] | None,
    horizon: int,
    steps: int = 4,
    cfg: ShortcutConfig = ShortcutConfig(),
    k_max: int | None = None,
    generator: torch.Generator | None = None,
    context_window: int | None = None,
) -> Tensor:
    """Roll out `horizon` frames (B, horizon, N_b, D_b) after clean context (B, C, N_b, D_b)
    with a `FrameSampler` (its docstring has the cost and the arguments).

    actions: name → (B, C + horizon), actions[:, t] leads into frame t (as in `forward`).
    The last frame is not committed (nothing reads it)."""
    k_max = model.cfg.k_max if k_max is None else k_max
    _check_sampling(context, actions, horizon, steps, k_max, context_window)
    c = context.shape[1]
    sampler = FrameSampler(model, steps, cfg, k_max, generator, context_window)
    sampler.start(context, _slice(actions, 0, c))
    frames = []
    for i in range(horizon):
        step_actions = _slice(actions, c + i, c + i + 1)
        x = sampler.frame(step_actions)
        frames.append(x)
        if i < horizon - 1:
            sampler.commit(x, step_actions)
    return torch.cat(frames, 1) if frames else _empty_frame(model, context.shape[0], context)[:, :0]


def _empty_frame(model: Dynamics, b: int, like: Tensor) -> Tensor:
    return like.new_zeros(b, 1, model.cfg.latents, model.cfg.bottleneck)


@torch.no_grad()
def generate_without_cache(
    model: Dynamics,
    context: Tensor,
    actions: dict[str, Tensor] | None,
    horizon: int,
    steps: int = 4,
    cfg: ShortcutConfig = ShortcutConfig(),
    k_max: int | None = None,
    generator: torch.Generator | None = None,
    context_window: int | None = None,
) -> Tensor:
    """`generate` recomputing the whole (context + generated) sequence at every pass.

    Same noise draws in the same order, so with the same generator it gives the same frames as
    `generate` (up to float error) when nothing is cropped. With a `context_window` smaller than
    the sequence the two differ slightly: this one re-encodes the window alone, the cache keeps
    K/V computed with the longer past. The reference for tests and the cache benchmark.
    """
    k_max = model.cfg.k_max if k_max is None else k_max
    _check_sampling(context, actions, horizon, steps, k_max, context_window)
    b, c = context.shape[:2]
    tau_ctx, d_min, d = context_level(cfg.context_noise, k_max), 1.0 / k_max, 1.0 / steps
    past = noise_context(context, tau_ctx, generator) if c else None
    frames = []
    for i in range(horizon):
        t = c + i
        x = randn_like(context[:, :1] if c else _empty_frame(model, b, context), generator)
        for k in range(steps):
            tau = k * d
            seq = x if past is None else torch.cat([past, x], 1)
            n_past = seq.shape[1] - 1
            taus = torch.cat([constant(b, n_past, tau_ctx, x), constant(b, 1, tau, x)], 1)
            ds = torch.cat([constant(b, n_past, d_min, x), constant(b, 1, d, x)], 1)
            if context_window is not None:
                keep = min(seq.shape[1], context_window + 1)
                seq, taus, ds = seq[:, -keep:], taus[:, -keep:], ds[:, -keep:]
            pred = model(seq, taus, ds, _slice(actions, t + 1 - seq.shape[1], t + 1))[:, -1:]
            x = _euler(x, pred, tau, d, cfg.tau_clamp)
        frames.append(x)
        if i < horizon - 1:
            noised = noise_context(x, tau_ctx, generator)
            past = noised if past is None else torch.cat([past, noised], 1)
    return torch.cat(frames, 1) if frames else _empty_frame(model, b, context)[:, :0]
