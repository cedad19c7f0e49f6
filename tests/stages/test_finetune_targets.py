"""Phase 2 trains on the task convention it is evaluated with (issue 15, item 1): on a real
recorded Crafter episode, the reward and BC terms of `finetune_agent`'s loss equal the ones
computed by hand from `task_rewards(events, pursued_task(task))`."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamer4.agent import AgentConfig, mtp_targets, pursued_task, task_rewards
from dreamer4.dynamics import DynamicsConfig, action_spec
from dreamer4.episodes.dataset import COMPONENTS
from dreamer4.shortcut import ShortcutConfig
from dreamer4.stages.finetune_agent import AgentJob, task_vocabulary
from dreamer4.stages.ingest import ingest
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, WindowSampler
from tests.conftest import write_npz_episode


def _real_batch(tmp_path: Path, tasks: tuple[str, ...], length: int) -> dict[str, torch.Tensor]:
    items = []
    data = EpisodeSequences(
        tmp_path / "episodes",
        SequenceSpec(length=length, split="train", tasks=tasks, relevant_fraction=1.0, fields=()),
    )
    for w in WindowSampler(data, 6, 0, 0).windows(0):
        items.append(data[w])
    batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    b, t = batch["frames"].shape[:2]
    batch["latents"] = torch.rand(b, t, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch["relevant"][:2] = False  # some uniform rows: reward only, no BC
    return batch


def test_reward_and_bc_targets_follow_the_pursued_task(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_npz_episode(raw, seed=3, length=120, skill=1.0)  # an expert: achievements happen
    ingest(raw, tmp_path / "episodes", resolution=8, eval_fraction=0.0)
    tasks = task_vocabulary(tmp_path / "episodes")
    batch = _real_batch(tmp_path, tasks, 12)
    task, events = batch["task"], batch["events"]
    y0, valid0 = task_rewards(events, pursued_task(task), 1)
    y_raw, valid_raw = task_rewards(events, task, 1)
    positives = int((y0[..., 0] > 0.5)[valid0[..., 0]].sum())
    assert positives > int((y_raw[..., 0] > 0.5)[valid_raw[..., 0]].sum())  # the conventions differ

    components = [COMPONENTS["crafter"]]
    dyn = DynamicsConfig(
        latents=4, bottleneck=4, pack=2, width=16, depth=2, heads=2, time_every=2, registers=1,
        k_max=8, actions=action_spec(components),
    )  # fmt: skip
    agent_cfg = AgentConfig(tasks=tasks, mtp=3, bins=41)
    spec = SequenceSpec(length=12, arrays=("latents",), fields=(), tasks=tasks)
    job = AgentJob("bc_baseline", dyn, agent_cfg, ShortcutConfig(), spec, 0.0, None, tmp_path, 2)
    torch.manual_seed(0)
    model = job.build_model()
    model.norms.eval()  # plain terms: the running RMS would divide them
    with torch.no_grad():  # zero-initialised heads give every target the same NLL
        for p in [*model.agent.reward.parameters(), *model.agent.policy.parameters()]:
            p.normal_(0, 0.5)
    torch.manual_seed(1)
    terms = job.loss(model, batch)

    # by hand, with the same features (the context noise drawn from the same global seed)
    torch.manual_seed(1)
    h = job._agent_features(model.agent, batch["latents"], batch, pursued_task(task), None)
    y, valid = task_rewards(events, pursued_task(task), 3)
    nll = model.agent.twohot.loss(model.agent.reward(h), y)
    want_reward = (nll * valid).sum() / valid.sum()
    torch.testing.assert_close(terms["reward"], want_reward)
    logits = model.agent.policy(h)
    targets = {"crafter": mtp_targets(batch["action/crafter"].long(), 3)[0]}
    logp, labelled = model.agent.space.log_prob(logits, targets)
    _, inside = mtp_targets(pursued_task(task), 3)
    mask = labelled & inside & (pursued_task(task) >= 0)[:, :, None]
    mask &= batch["relevant"][:, None, None]  # BC on the relevant rows only
    torch.testing.assert_close(terms["bc"], -(logp * mask).sum() / mask.sum())
