"""Stage `finetune_agent` → asset `agent` (phase 2, paper §3.3, §4.1), and its baseline stage
`bc_baseline` → asset `bc_agent` (the same code with `--scratch`).

Phase 2 inserts task-conditioned agent tokens into the pretrained world model and trains the
policy and reward heads (eq. 9, `dreamer4.agent`) while the video-prediction loss continues.
Every micro-batch is half uniform windows, half "relevant" ones drawn around a task event
(`train.sequences`, `relevant_fraction`); behaviour cloning runs on the relevant rows only and
the shortcut-forcing loss on the uniform rows only ("to avoid optimistic generations"). Tasks
are the dataset's events (`event/<name>` columns: Crafter's 22 achievements, the 20 VPT tasks);
the task of a step is the next event its episode reaches (`task` column) and the task reward is
that event happening.

Choices (documented in docs/agent.md):

- Agent heads read the frames as the sampler's context sees them: one extra forward over every
  row with the frames noised to the context level τ_ctx (d = d_min) — what the agent reads in
  imagination and in the real environment (the commit pass). The shortcut loss keeps its own
  forward with per-frame random (τ, d) on the uniform rows.
- The reward loss runs on every row with a task (uniform rows add the windows where the task
  is not achieved; relevant rows alone would make the reward head optimistic); BC on relevant
  rows only, as the paper says.
- Every term is divided by its running RMS (§3: all losses of the transformer are normalised).

`--scratch` (stage `bc_baseline`): the same agent, heads and data from a randomly initialised
transformer, without the dynamics loss — the paper's "BC" baseline (Table 7), against which
WM+BC (this stage's `agent`) and Dreamer 4 (`policy`) are compared.

Outputs: `models/agent/` (weights, EMA weights, config with the task vocabulary), DVC metrics
`agent/bc_nll_heldout`, `agent/bc_accuracy_heldout`, `agent/reward_nll_heldout`,
`agent/reward_at_events` and `agent/reward_elsewhere` (mean predicted reward where the task
event happens / does not) on held-out relevant windows.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from scipy.stats import mannwhitneyu
from torch import nn

from dreamer4.agent import Agent, AgentConfig, agent_loss, pursued_task, task_rewards
from dreamer4.dynamics import (
    DynamicsConfig,
    shift_actions,
    world_model_configs,
    world_model_weights,
)
from dreamer4.errors import StageError
from dreamer4.files import content_hash, read_config
from dreamer4.shortcut import ShortcutConfig, as_context, sample_tau_d, shortcut_loss
from dreamer4.tokenizer import RunningRMS
from dreamer4.train.checkpoint import CONFIG, EMA_WEIGHTS
from dreamer4.train.engine import Job, TrainSettings, add_draws, draw_generator, train_stage
from dreamer4.train.engine import add_arguments as engine_arguments
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch


def task_vocabulary(data: Path) -> tuple[str, ...]:
    """The dataset's events, in column order: the tasks an agent can be prompted with."""

    names = pq.read_schema(Path(data) / "steps.parquet").names
    tasks = tuple(c.removeprefix("event/") for c in names if c.startswith("event/"))
    if not tasks:
        raise StageError(f"{data / 'steps.parquet'}: no `event/<name>` columns, so no tasks")
    return tasks


class AgentJob(Job):
    evaluate_with_ema = True

    def __init__(
        self,
        stage: str,
        dynamics: Any,
        agent: Any,
        shortcut: Any,
        spec: Any,
        unlabelled: float,
        world_model: Path | None,
        data: Path,
        eval_sequences: int,
    ) -> None:
        self.stage, self.dynamics, self.agent, self.shortcut = stage, dynamics, agent, shortcut
        self.spec, self.unlabelled, self.world_model = spec, unlabelled, world_model
        self.data, self.eval_sequences = data, eval_sequences
        self._heldout: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "dynamics": asdict(self.dynamics),
            "agent": asdict(self.agent),
            "shortcut": asdict(self.shortcut),
            "sequence": asdict(self.spec),
            "unlabelled_fraction": self.unlabelled,
            "pretrained": self.world_model is not None,
            # the world model's weights: retrained weights must not resume an old run
            "world_model_sha256": (
                content_hash(self.world_model / EMA_WEIGHTS)
                if self.world_model is not None
                else None
            ),
        }

    def build_model(self) -> Any:

        model = nn.Module()
        model.agent = Agent(self.dynamics, self.agent)
        if self.world_model is not None:
            model.agent.dynamics.load_state_dict(world_model_weights(self.world_model))
        decay = self.shortcut.rms_decay
        model.norms = nn.ModuleDict(
            {k: RunningRMS(decay) for k in ("flow", "bootstrap", "bc", "reward")}
        )
        return add_draws(model)

    def loss(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:

        z1 = batch["latents"].float()
        relevant = batch["relevant"]
        terms: dict[str, Any] = {}
        total = z1.new_zeros(())
        uniform = (~relevant).nonzero().squeeze(1)  # the same count on every rank
        if self.world_model is not None and len(uniform):
            k_max = self.dynamics.k_max
            gen = draw_generator(model)  # alike on all ranks (ZeRO-3)
            tau, d = sample_tau_d(len(uniform), z1.shape[1], k_max, self.shortcut, gen)
            rows = {k: v[uniform] for k, v in batch.items() if k.startswith("action/")}
            drop = torch.rand(len(uniform), device=z1.device) < self.unlabelled
            sc = shortcut_loss(
                model.agent.dynamics,
                z1[uniform],
                shift_actions(rows, drop),
                self.shortcut,
                k_max,
                independent=batch["independent"][uniform],
                tau=tau,
                d=d,
                norms=model.norms,
            )
            total = total + sc["loss"]
            terms.update(flow=sc["flow"], bootstrap=sc["bootstrap"])
        task = self.task(batch)
        h = self._agent_features(model.agent, z1, batch, task, None)
        agent = self._agent_terms(model.agent, h, batch, task)
        for name in ("bc", "reward"):
            counted = int(agent[f"{name}_targets"]) > 0  # an absent term must not drag its RMS
            total = total + (model.norms[name](agent[name]) if counted else agent[name])
            terms[name] = agent[name]
        return {"loss": total, **terms, "bc_accuracy": agent["bc_accuracy"]}

    @staticmethod
    def task(batch: dict[str, Any]) -> Any:
        """The one task convention of training, evaluation, imagination and play: the task the
        episode pursued as each frame arrived (`agent.pursued_task` of the step index's `task`).
        Agent tokens, reward targets and BC targets all take it from here."""

        return pursued_task(batch["task"])

    def _agent_features(
        self, agent: Any, z1: Any, batch: dict[str, Any], task: Any, gen: Any
    ) -> Any:
        """Agent outputs h (B, T, width) with the frames at the sampler's context level."""

        inputs = as_context(z1, self.shortcut.context_noise, self.dynamics.k_max, gen)
        return agent(*inputs, shift_actions(batch), task)[1]

    @staticmethod
    def _agent_terms(agent: Any, h: Any, batch: dict[str, Any], task: Any) -> dict[str, Any]:

        actions = {
            k.removeprefix("action/"): v for k, v in batch.items() if k.startswith("action/")
        }
        return agent_loss(agent, h, actions, batch["events"], task, batch["relevant"])

    def tokens(self, batch: dict[str, Any]) -> int:
        b, t = batch["latents"].shape[:2]
        return b * t * (self.dynamics.tokens + self.agent.agent_tokens)

    # -- held-out evaluation ------------------------------------------------------------------
    def heldout(self) -> dict[str, Any]:
        """Fixed relevant windows of the eval split (the train split if eval has no event)."""
        if self._heldout is None:
            for split in ("eval", "train"):
                spec = replace(self.spec, split=split, relevant_fraction=1.0, image_fraction=0.0)
                try:
                    data = EpisodeSequences(self.data, spec)
                    self._heldout = fixed_batch(data, self.eval_sequences, 4321)[0]
                    break
                except StageError:
                    if split == "train":
                        raise
        return self._heldout

    def evaluate(self, model: Any, final: bool) -> dict[str, float]:

        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.heldout().items()}
        gen = torch.Generator(device=device).manual_seed(0)
        task = self.task(batch)
        h = self._agent_features(model.agent, batch["latents"].float(), batch, task, gen)
        terms = self._agent_terms(model.agent, h, batch, task)
        predicted = model.agent.twohot.decode(model.agent.reward(h, 1)[:, :, 0]).float()
        target, valid = task_rewards(batch["events"], task, 1)
        target, valid = target[:, :, 0], valid[:, :, 0]
        hit, miss = valid & (target > 0.5), valid & (target <= 0.5)
        return {
            "agent/bc_nll_heldout": float(terms["bc"]),
            "agent/bc_accuracy_heldout": float(terms["bc_accuracy"]),
            "agent/reward_nll_heldout": float(terms["reward"]),
            "agent/reward_at_events": float(predicted[hit].mean()) if hit.any() else 0.0,
            "agent/reward_elsewhere": float(predicted[miss].mean()) if miss.any() else 0.0,
            "agent/reward_auroc": auroc(predicted[hit], predicted[miss]),
        }


def auroc(positive: Any, negative: Any) -> float:
    """Area under the ROC curve of scores at positives against negatives: the probability that
    a random positive outscores a random negative (ties count half), i.e. Mann-Whitney U over
    the pair count. 0.5 = the reward head does not tell task events from other frames; NaN
    when either side is empty."""

    pos, neg = positive.detach().cpu().double().numpy(), negative.detach().cpu().double().numpy()
    if not len(pos) or not len(neg):
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def add_arguments(p: argparse.ArgumentParser) -> None:

    engine_arguments(p)
    p.add_argument("--world-model", default=None, help="world_model folder (phase 1 weights)")
    p.add_argument(
        "--scratch",
        action="store_true",
        help="BC baseline: random transformer, no world-model pretraining, no dynamics loss",
    )


def run(args: argparse.Namespace) -> int:

    stage = "bc_baseline" if args.scratch else "finetune_agent"
    settings = TrainSettings.load(args, "finetune_agent")
    own = settings.own
    data = settings.path("latents", args.data)
    world_model = None
    if args.scratch:
        dynamics, shortcut = world_model_configs(settings.section("train_dynamics"), data)
    else:
        world_model = settings.path("world_model", args.world_model)
        trained = read_config(world_model, CONFIG, "dreamer4 train-dynamics")["model"]
        dynamics = DynamicsConfig(**trained["model"])
        shortcut = ShortcutConfig(**trained["shortcut"])
    agent = own.sub("agent").config(AgentConfig, {"tasks": task_vocabulary(data)})
    spec = own.sub("sequence").config(
        SequenceSpec,
        {
            "split": "train",
            "arrays": ("latents",),
            "actions": True,
            "fields": (),
            "tasks": agent.tasks,
            "relevant_fraction": own.fraction("relevant_fraction"),
        },
    )
    out = settings.path("bc_agent" if args.scratch else "agent", args.out)
    job_paths = settings.job_paths(args, data, stage, out)
    job = AgentJob(
        stage,
        dynamics,
        agent,
        shortcut,
        spec,
        own.fraction("unlabelled_fraction"),
        world_model,
        data,
        own.count("eval_sequences"),
    )
    return train_stage(args, job, settings.config(args), job_paths)
