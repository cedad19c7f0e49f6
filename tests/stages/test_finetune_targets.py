"""Phase 2 trains on the task convention it is evaluated with (issue 15, item 1): on a real
recorded Crafter episode, the reward and BC terms of `finetune_agent`'s loss equal the ones
computed by hand from `task_rewards(events, pursued_task(task))`; on a hand-built batch, every
mask and offset of the reward, BC and bc_accuracy terms, checked by explicit loops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamer4.agent import AgentConfig, mtp_targets, pursued_task, task_rewards
from dreamer4.dynamics import DynamicsConfig, action_spec
from dreamer4.episodes.dataset import COMPONENTS
from dreamer4.shortcut import ShortcutConfig
from dreamer4.stages.finetune_agent import AgentJob, task_vocabulary
from dreamer4.stages.ingest import ingest
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, WindowSampler
from tests.conftest import write_npz_episode

pytestmark = pytest.mark.usefixtures("one_thread")


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


# -- the same loss on a hand-built batch: every mask and offset checked element by element ----

TASKS3 = ("collect_wood", "place_table", "make_wood_pickaxe")


def _hand_job() -> tuple[AgentJob, torch.nn.Module]:
    """A tiny `bc_baseline` job whose heads have non-trivial weights and whose world model
    ignores actions (zero action embeddings), so the actions can be chosen after h is known."""
    dyn = DynamicsConfig(
        latents=4, bottleneck=4, pack=2, width=16, depth=2, heads=2, time_every=2, registers=1,
        k_max=8, actions=(("crafter", "categorical", 17),),
    )  # fmt: skip
    cfg = AgentConfig(tasks=TASKS3, mtp=3, bins=21, symlog_range=3.0)
    spec = SequenceSpec(length=6, arrays=("latents",), fields=(), tasks=TASKS3)
    job = AgentJob("bc_baseline", dyn, cfg, ShortcutConfig(), spec, 0.0, None, Path("."), 2)
    torch.manual_seed(0)
    model = job.build_model()
    model.norms.eval()
    with torch.no_grad():
        for p in [*model.agent.reward.parameters(), *model.agent.policy.parameters()]:
            p.normal_(0, 0.5)
        model.agent.dynamics.action_embed.weight.zero_()
    return job, model


def _hand_batch() -> dict[str, torch.Tensor]:
    """B = 4 windows of T = 6 steps: step-index `task` (next event at or after t, -1 = none),
    events, two relevant rows (1, 2) and two uniform ones (0, 3)."""
    task = torch.tensor(
        [
            [0, 0, 1, 1, 1, -1],  # event 0 at row 1, event 1 at row 4, then no task
            [2, 2, 2, 0, 0, 0],  # event 2 at row 2; task 0 never reached in the window
            [-1, -1, -1, 1, 1, 1],  # no task at first (pursued: -1 for frames 0 … 3)
            [1, 1, 1, 1, -1, -1],
        ]
    )
    events = torch.zeros(4, 6, 3, dtype=torch.bool)
    events[0, 1, 0] = events[0, 4, 1] = events[1, 2, 2] = events[3, 3, 1] = True
    events[2, 0, 1] = True  # an event of another task: a negative for every other task
    gen = torch.Generator().manual_seed(5)
    return {
        "latents": torch.rand(4, 6, 4, 4, generator=gen) * 2 - 1,
        "relevant": torch.tensor([False, True, True, False]),
        "independent": torch.zeros(4, dtype=torch.bool),
        "action/crafter": torch.zeros(4, 6, dtype=torch.long),  # set once h is known
        "events": events,
        "task": task,
    }


# the pursued task (the step index's task one row later; frame 0 keeps its own), by hand
PURSUED = [[0, 0, 0, 1, 1, 1], [2, 2, 2, 2, 0, 0], [-1, -1, -1, -1, 1, 1], [1, 1, 1, 1, 1, -1]]


def test_finetune_loss_masks_and_offsets_element_by_element():
    """`AgentJob.loss` on a hand-built batch against explicit loops over (b, t, n): reward NLL
    of r_{t+n} = events[t + n − 1, task_t] where t + n ∈ [1, T) and task_t ≥ 0 (all rows);
    BC −log π(a_{t+n} | h_t) on relevant rows with a task and a labelled action; bc_accuracy
    of the offset-0 argmax against a_t on those rows. Catches a dropped reward mask, frame 0
    or task-less frames in the reward, BC on uniform rows, a wrong offset in bc_accuracy, and
    `AgentJob.task` not shifting to the pursued task."""
    job, model = _hand_job()
    batch = _hand_batch()
    pursued = torch.tensor(PURSUED)
    b, t, n_mtp = 4, 6, 3
    agent = model.agent
    torch.manual_seed(1)
    h = job._agent_features(agent, batch["latents"], batch, pursued, None)
    with torch.no_grad():
        logits = agent.policy(h)  # (B, T, L, 17)
        reward_logits = agent.reward(h)  # (B, T, L, bins)
    # actions: the offset-0 argmax except at a few places, a few unlabelled (h ignores them)
    greedy = logits[:, :, 0].argmax(-1)
    actions = greedy.clone()
    actions[1, 1] = (greedy[1, 1] + 1) % 17  # a miss on a relevant row
    actions[2, 4] = (greedy[2, 4] + 3) % 17
    actions[1, 3] = -1  # unlabelled
    batch["action/crafter"] = actions
    assert not torch.equal(logits[:, :, 1].argmax(-1), greedy)  # the offsets disagree

    torch.manual_seed(1)
    terms = job.loss(model, batch)

    # reward: every row, by hand
    nll, count = 0.0, 0
    for i in range(b):
        for s in range(t):
            k = PURSUED[i][s]
            for n in range(n_mtp):
                if k < 0 or s + n >= t or s + n == 0:
                    continue
                y = float(batch["events"][i, s + n - 1, k])
                nll += float(agent.twohot.loss(reward_logits[i, s, n], torch.tensor(y)))
                count += 1
    assert count == 44  # 14 + 14 + 3 + 13
    assert abs(float(terms["reward"].detach()) - nll / count) < 1e-5

    # BC: relevant rows only, labelled actions, a task at t
    total, count = 0.0, 0
    hits, seen = 0, 0
    for i in range(b):
        if not batch["relevant"][i]:
            continue
        for s in range(t):
            k = PURSUED[i][s]
            if k < 0:
                continue
            for n in range(n_mtp):
                if s + n >= t or actions[i, s + n] < 0:
                    continue
                total -= float(logits[i, s, n].log_softmax(-1)[actions[i, s + n]])
                count += 1
            if actions[i, s] >= 0:
                hits += int(logits[i, s, 0].argmax() == actions[i, s])
                seen += 1
    assert (count, seen, hits) == (15, 7, 5)
    assert abs(float(terms["bc"].detach()) - total / count) < 1e-5
    assert abs(float(terms["bc_accuracy"]) - hits / seen) < 1e-6
