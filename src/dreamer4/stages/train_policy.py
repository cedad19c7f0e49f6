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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dreamer4.errors import StageError
from dreamer4.files import content_hash, read_config
from dreamer4.train.checkpoint import CONFIG, EMA_WEIGHTS
from dreamer4.train.engine import Job


@dataclass(frozen=True)
class ImaginationConfig:
    horizon: int = 16  # imagined steps per rollout
    context: int = 8  # real frames before the first imagined one
    context_window: int = 0  # most frames the KV cache keeps (0 = context + horizon)
    steps: int = 4  # shortcut steps per imagined frame (K)
    gamma: float = 0.997
    lam: float = 0.95
    alpha: float = 0.5  # PMPO weight of the positive set
    beta: float = 0.3  # PMPO weight of KL(π ‖ π_prior)
    # The value head starts at 0, far below its fixed point (docs/agent.md, "Phase 3"):
    value_warmup: int = 50  # first optimizer steps train the value only, the policy frozen
    value_lr: float = 3e-3  # the value head's own peak learning rate (policy: train.lr)
    center_advantages: bool = True  # A − mean(A) over the batch before PMPO takes its sign

    @property
    def window(self) -> int | None:
        return self.context_window or None


def known_tasks(data: Path, tasks: tuple[str, ...]) -> list[int]:
    """Indices of the tasks some episode of the data reaches (prompts for task-less contexts)."""
    import pandas as pd

    seen = set(pd.read_parquet(Path(data) / "steps.parquet", columns=["task"])["task"].dropna())
    known = [i for i, t in enumerate(tasks) if t in seen]
    if not known:
        raise StageError(f"{data}: no episode reaches any task ({', '.join(tasks)})")
    return known


def prompt_tasks(task: Any, known: list[int], generator: Any = None) -> Any:
    """Each rollout's task: its context's task at the last frame, else a known task at random."""
    import torch

    pool = torch.tensor(known, device=task.device)
    pick = torch.randint(0, len(pool), task.shape, generator=generator, device=pool.device)
    return torch.where(task >= 0, task, pool[pick])


def policy_terms(
    model: Any, rollout: Any, cfg: ImaginationConfig, train_policy: bool = True
) -> dict[str, Any]:
    """Value (eq. 10) and PMPO (eq. 11) losses on one batch of rollouts of `model`.

    train_policy False (the value warm-up): "loss" is the value loss alone, the PMPO terms are
    still reported. With `cfg.center_advantages` the sign PMPO uses is that of A − mean(A);
    "positive_fraction" is always that of the raw A = R^λ − v (the value head's bias shows)."""
    from dreamer4.pmpo import lambda_returns, pmpo_loss

    agent = model.agent
    value_logits = model.value(rollout.features, 1)[:, :, 0]  # (B, H + 1, bins)
    values = agent.twohot.decode(value_logits).detach()
    returns = lambda_returns(rollout.rewards, values, rollout.continues, cfg.gamma, cfg.lam)
    value_loss = agent.twohot.loss(value_logits[:, :-1], returns).mean()
    states = rollout.features[:, :-1]
    logits = agent.policy(states, 1)[:, :, 0]
    prior = model.prior(states, 1)[:, :, 0]
    log_prob, _ = agent.space.log_prob(logits, rollout.actions)
    kl = agent.space.kl(logits, prior)
    advantage = returns - values[:, :-1]
    signed = advantage - advantage.mean() if cfg.center_advantages else advantage
    pmpo = pmpo_loss(log_prob, signed, kl, cfg.alpha, cfg.beta)
    return {
        # × 0 keeps the policy in the graph: zero gradients, not missing ones (ZeRO reduces all)
        "loss": pmpo["loss"] * float(train_policy) + value_loss,
        "policy": pmpo["loss"],
        "value": value_loss,
        "kl": pmpo["kl"],
        "positive_fraction": (advantage >= 0).float().mean(),
        "entropy": agent.space.entropy(logits).mean(),
        "return": rollout.rewards.sum(1).mean(),
        "values": values.mean(),
        "returns": returns,
        "values_all": values,
    }


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
        from dreamer4.dynamics import DynamicsConfig
        from dreamer4.shortcut import ShortcutConfig

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
        from dreamer4.agent import load_agent, policy_module

        agent, _ = load_agent(self.agent_dir)
        return policy_module(agent)

    def param_groups(self, model: Any, cfg: Any) -> list[dict[str, Any]]:
        """The value head at `value_lr`; the policy head at the stage's lr and without weight
        decay (it starts from the cloned policy, which the KL term, not decay, keeps it near;
        and zero gradients during the warm-up then leave it exactly where it is)."""
        from dreamer4.train.engine import decay_groups

        policy = [p for p in model.agent.policy.parameters() if p.requires_grad]
        value = decay_groups(model.value, cfg.weight_decay, lr=self.imagination.value_lr)
        return [*value, {"params": policy, "weight_decay": 0.0}]

    def loss(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        from dreamer4.dynamics import shift_actions
        from dreamer4.imagination import imagine

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
    from dreamer4.train.engine import add_arguments as engine_arguments

    engine_arguments(p)
    p.add_argument("--agent", default=None, help="agent folder (phase 2 output)")


def imagination_config(own: dict[str, Any]) -> ImaginationConfig:
    from dreamer4.params import known_keys

    return ImaginationConfig(**known_keys(ImaginationConfig, dict(own), "train_policy.imagination"))


def run(args: argparse.Namespace) -> int:
    from dreamer4.train.engine import TrainSettings, train_stage
    from dreamer4.train.sequences import SequenceSpec

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
