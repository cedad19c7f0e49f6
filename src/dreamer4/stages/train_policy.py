"""Stage `train_policy` → asset `policy` (phase 3, paper §3.3, Algorithm 1): reinforcement
learning purely inside the world model.

Each optimizer step, on every rank: draw contexts from the dataset (one rollout per context),
prompt each rollout with the task its data reaches next (a task seen in the data, uniformly,
where the episode reaches none), roll the *current* policy out for `horizon` steps in the
frozen world model (`dreamer4.imagination`), then update the value head on TD(λ) returns
(eq. 10) and the policy head with PMPO against a frozen copy of the cloned policy (eq. 11,
`dreamer4.pmpo`). The transformer, the task embedding and the reward head stay frozen (they are
`requires_grad=False`, so DeepSpeed never sees them); only the policy and the new value head
train.

Why imagination and updates alternate inside this one job (as in the paper) rather than as two
stages: PMPO's advantages must be those of the policy being improved — a dataset of the cloned
policy's rollouts would allow one step of policy improvement and then go stale, and a DVC stage
per round would turn one training run into thousands of stages. The `imagine` stage downstream
records what the result imagines (and what the cloned policy imagines from the same contexts
and noise), which is the `imagination_dataset` asset and the before/after comparison.

Outputs: `models/policy/` — the whole phase-3 module (agent with the trained policy head,
`value`, and `prior`, the frozen cloned policy), read by `dreamer4.agent.load_agent`; the
training curve `loss/return` (mean imagined return of each batch's rollouts) in train.tsv.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamer4.agent import load_agent, policy_module
from dreamer4.dynamics import DynamicsConfig, shift_actions
from dreamer4.files import content_hash, read_config
from dreamer4.imagination import ImaginationConfig, imagine, known_tasks, prompt_tasks
from dreamer4.pmpo import policy_terms
from dreamer4.shortcut import ShortcutConfig
from dreamer4.train.checkpoint import CONFIG, EMA_WEIGHTS
from dreamer4.train.engine import Job, TrainSettings, decay_groups, train_stage
from dreamer4.train.engine import add_arguments as engine_arguments
from dreamer4.train.sequences import SequenceSpec


class PolicyJob(Job):
    stage = "train_policy"

    def __init__(
        self,
        agent_dir: Path,
        imagination: ImaginationConfig,
        spec: Any,
        tasks: list[int],
        grad_accum: int = 1,
    ) -> None:

        self.agent_dir, self.imagination, self.spec, self.known = (
            agent_dir,
            imagination,
            spec,
            tasks,
        )
        self.grad_accum = grad_accum
        self._agent_config: dict[str, Any] = read_config(agent_dir)
        model = self._agent_config["model"]
        self.shortcut = ShortcutConfig(**model["shortcut"])
        # tokens per step: the world model's plus the agent tokens
        self.step_tokens = (
            DynamicsConfig(**model["dynamics"]).tokens + model["agent"]["agent_tokens"]
        )

    def config(self) -> dict[str, Any]:
        model = self._agent_config["model"]
        return {
            "dynamics": model["dynamics"],
            "agent": model["agent"],
            "shortcut": model["shortcut"],
            "imagination": asdict(self.imagination),
            "sequence": asdict(self.spec),
            "known_tasks": self.known,
            # the agent's weights: a retrained agent must not resume an old run
            "agent_sha256": content_hash(self.agent_dir / EMA_WEIGHTS),
        }

    def build_model(self) -> Any:

        agent, _ = load_agent(self.agent_dir)
        return policy_module(agent)

    def param_groups(self, model: Any, cfg: Any) -> list[dict[str, Any]]:
        """The value head at `value_lr`; the policy head at the stage's lr and without weight
        decay (it starts from the cloned policy, which the KL term, not decay, keeps it near;
        and zero gradients during the warm-up then leave it exactly where it is)."""

        policy = [p for p in model.agent.policy.parameters() if p.requires_grad]
        value = decay_groups(model.value, cfg.weight_decay, lr=self.imagination.value_lr)
        return [*value, {"params": policy, "weight_decay": 0.0}]

    def loss(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:

        cfg = self.imagination
        task = prompt_tasks(batch["task"][:, -1], self.known)
        rollout = imagine(
            model.agent,
            batch["latents"].float(),
            shift_actions(batch),
            task,
            cfg.horizon,
            cfg.steps,
            self.shortcut,
            context_window=cfg.window,
        )
        step = int(model.micro_steps) // self.grad_accum
        model.micro_steps += 1
        terms = policy_terms(model, rollout, cfg, train_policy=step >= cfg.value_warmup)
        return {k: v for k, v in terms.items() if k not in ("returns", "values_all")}

    def tokens(self, batch: dict[str, Any]) -> int:
        b, c = batch["latents"].shape[:2]
        cfg = self.imagination
        return b * self.step_tokens * (c + cfg.horizon * (cfg.steps + 1))


def add_arguments(p: argparse.ArgumentParser) -> None:

    engine_arguments(p)
    p.add_argument("--agent", default=None, help="agent folder (phase 2 output)")


def run(args: argparse.Namespace) -> int:

    settings = TrainSettings.load(args, PolicyJob.stage)
    own = settings.own
    data = settings.path("latents", args.data)
    agent_dir = settings.path("agent", args.agent)
    agent = read_config(agent_dir, CONFIG, "dreamer4 finetune-agent")["model"]["agent"]
    tasks = tuple(agent["tasks"])
    cfg = own.sub("imagination").config(ImaginationConfig)
    spec = SequenceSpec(
        length=cfg.context, arrays=("latents",), actions=True, fields=(), tasks=tasks
    )
    job_paths = settings.job_paths(args, data, PolicyJob.stage, settings.path("policy", args.out))
    train = settings.config(args)
    job = PolicyJob(agent_dir, cfg, spec, known_tasks(data, tasks), train.grad_accum)
    return train_stage(args, job, train, job_paths)
