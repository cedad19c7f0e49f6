"""The evaluation tables: Wilson intervals, Table 7 (success, score) and Table 8 (time) by hand."""

from __future__ import annotations

import re
from math import comb

import numpy as np
import pandas as pd
import pytest

from dreamer4.eval.crafter_score import crafter_score
from dreamer4.eval.report import comparison_display
from dreamer4.eval.tables import (
    action_table,
    episode_rows,
    headline_table,
    mcnemar_exact,
    pairwise_tests,
    score_interval,
    success_table,
    time_to_milestone,
    wilson_interval,
)

MILESTONES = ("collect_wood", "place_table")
LABELS = {"a": "Agent A", "b": "Agent B"}


def test_wilson_interval_matches_published_values():
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    # 0/10: [0, 27.75] %; 5/10: [23.66, 76.34] %; 10/10: [72.25, 100] %
    np.testing.assert_allclose(low, [0.0, 23.66, 72.25], atol=0.01)
    np.testing.assert_allclose(high, [27.75, 76.34, 100.0], atol=0.01)


def test_tables_from_hand_made_episodes():
    a = [
        {"length": 10, "reward": 2.0, "achievement_collect_wood": 2,
         "first_step": {"collect_wood": 4}},
        {"length": 20, "reward": 3.0, "achievement_collect_wood": 1, "achievement_place_table": 1,
         "first_step": {"collect_wood": 8, "place_table": 15}},
        {"length": 30, "reward": 0.0},
        {"length": 40, "reward": 1.0, "achievement_wake_up": 1},
    ]  # fmt: skip
    b = [{"length": 5, "reward": 0.0}, {"length": 7, "reward": 1.0, "achievement_wake_up": 1}]
    episodes = pd.concat([episode_rows("a", a), episode_rows("b", b)], ignore_index=True)

    success = success_table(episodes).set_index(["agent", "achievement"])
    assert success.loc[("a", "collect_wood"), "successes"] == 2
    assert success.loc[("a", "collect_wood"), "success_rate"] == pytest.approx(50.0)
    assert success.loc[("b", "wake_up"), "success_rate"] == pytest.approx(50.0)
    assert success.loc[("a", "collect_diamond"), "ci_low"] == 0.0
    assert (success["ci_low"] <= success["success_rate"]).all()
    assert (success["success_rate"] <= success["ci_high"]).all()

    headline = headline_table(episodes, MILESTONES, LABELS)
    assert list(headline.index) == ["Agent A", "Agent B"]
    rates_a = success.loc["a", "success_rate"]
    assert headline.loc["Agent A", "score"] == pytest.approx(crafter_score(rates_a))
    assert headline.loc["Agent A", "episodes"] == 4
    assert headline.loc["Agent A", "return"] == pytest.approx(1.5)
    assert headline.loc["Agent A", "length"] == pytest.approx(25.0)
    assert headline.loc["Agent A", "place_table"] == pytest.approx(25.0)
    assert headline.loc["Agent B", "collect_wood"] == 0.0

    timing = time_to_milestone(episodes, MILESTONES, LABELS)
    assert timing.loc["Agent A", "collect_wood"] == pytest.approx(6.0)  # over the 2 that did
    assert timing.loc["Agent A", "n/collect_wood"] == 2
    assert timing.loc["Agent A", "place_table"] == pytest.approx(15.0)
    assert np.isnan(timing.loc["Agent B", "collect_wood"])
    assert timing.loc["Agent B", "n/place_table"] == 0


def test_action_table_weights_episodes_by_their_steps():
    a = [
        {"length": 10, "reward": 0.0, "actions": {"sleep": 2, "noop": 8}},
        {"length": 30, "reward": 0.0, "actions": {"do": 30}},
    ]
    b = [{"length": 4, "reward": 0.0, "actions": {"noop": 1, "move_left": 3}}]
    recorded = [{"length": 50, "reward": 0.0}]  # no action counts: left out, not zeros
    episodes = pd.concat(
        [episode_rows("a", a), episode_rows("b", b), episode_rows("rec", recorded)],
        ignore_index=True,
    )
    table = action_table(episodes, LABELS)
    assert list(table.columns) == ["Agent A", "Agent B"]
    assert table.index[0] == "noop" and len(table) == 17
    assert table.loc["sleep", "Agent A"] == pytest.approx(5.0)  # 2 of 40 steps, not of 2 means
    assert table.loc["do", "Agent A"] == pytest.approx(75.0)
    assert table.loc["move_left", "Agent B"] == pytest.approx(75.0)
    assert table.sum().to_numpy() == pytest.approx(100.0)
    assert action_table(episode_rows("rec", recorded), LABELS) is None


def _agent(name: str, wood: int, table: int, n: int) -> pd.DataFrame:
    """n episodes of `name`: the first `wood` collect wood, the first `table` also place one."""
    stats = [
        {"length": 10, "reward": 0.0, "achievement_collect_wood": int(i < wood),
         "achievement_place_table": int(i < table)}
        for i in range(n)
    ]  # fmt: skip
    return episode_rows(name, stats)


def _fisher_two_sided(ka: int, na: int, kb: int, nb: int) -> float:
    """Fisher's exact test by hand: the hypergeometric probabilities of every table with the
    same margins that are no more likely than the observed one, summed."""
    k, n = ka + kb, na + nb

    def prob(x: int) -> float:
        return comb(na, x) * comb(nb, k - x) / comb(n, k)

    seen = prob(ka)
    tables = range(max(0, k - nb), min(k, na) + 1)
    return sum(prob(x) for x in tables if prob(x) <= seen * (1 + 1e-9))


def test_pairwise_tests_fisher_and_score_difference():
    episodes = pd.concat(
        [_agent("a", 9, 9, 20), _agent("b", 8, 1, 30), _agent("c", 8, 1, 30)], ignore_index=True
    )
    labels = {"a": "A", "b": "B", "c": "C"}
    tests = pairwise_tests(episodes, [("a", "b"), ("b", "c"), ("a", "z")], MILESTONES, labels)
    assert set(zip(tests["agent"], tests["versus"], strict=True)) == {("A", "B"), ("B", "C")}
    rows = tests.set_index(["agent", "versus", "measure"])
    table = rows.loc[("A", "B", "place_table")]
    assert (table["value"], table["versus_value"]) == (45.0, pytest.approx(100 / 30))
    # unequal counts: two-sided is not twice one-sided here (0.00051 vs 0.00102)
    assert table["p_value"] == pytest.approx(_fisher_two_sided(9, 20, 1, 30))
    assert table["p_value"] < 0.05 < rows.loc[("A", "B", "collect_wood"), "p_value"]
    assert rows.loc[("B", "C", "place_table"), "p_value"] == pytest.approx(1.0)
    score = rows.loc[("A", "B", "score")]
    want = crafter_score(success_table(episodes).query("agent == 'a'")["success_rate"]) - (
        crafter_score(success_table(episodes).query("agent == 'b'")["success_rate"])
    )
    assert score["difference"] == pytest.approx(want)
    assert 0 < score["ci_low"] < score["difference"] < score["ci_high"]
    same = rows.loc[("B", "C", "score")]
    assert same["ci_low"] < 0 < same["ci_high"]  # identical agents: the interval spans 0


def test_paired_test_matches_worlds_by_seed_and_counts_only_discordant_worlds():
    # 20 shared worlds: a wins a table on 0–11, b on 0–3 and on 19 (b's rows in another order)
    a = episode_rows(
        "a",
        [
            {"length": 5, "reward": 0.0, "seed": w, "achievement_place_table": int(w < 12)}
            for w in range(20)
        ],
    )
    b = episode_rows("b", [{"length": 5, "reward": 0.0, "seed": w,
                            "achievement_place_table": int(w < 4 or w == 19)}
                           for w in reversed(range(20))])  # fmt: skip
    tests = pairwise_tests(pd.concat([a, b]), [("a", "b")], ("place_table",), {})
    row = tests.set_index("measure").loc["place_table"]
    # discordant worlds: 8 only a (4–11), 1 only b (19): 2·P(X ≤ 1), X ~ Bin(9, 1/2)
    assert row["p_paired"] == pytest.approx(2 * (comb(9, 0) + comb(9, 1)) / 2**9)
    assert row["p_value"] == pytest.approx(_fisher_two_sided(12, 20, 5, 20))
    assert row["p_paired"] < 0.05 < row["p_value"]  # shared worlds: the paired test sees more
    assert "McNemar" in row["test"]
    assert mcnemar_exact(np.ones(5, bool), np.ones(5, bool)) == 1.0  # no discordant world
    # seeds that do not match (or are unknown): no paired test
    other = b.assign(seed=b["seed"] + 100)
    unpaired = pairwise_tests(pd.concat([a, other]), [("a", "b")], ("place_table",), {})
    assert np.isnan(unpaired.set_index("measure").loc["place_table", "p_paired"])
    assert "McNemar" not in unpaired["test"].iloc[-1]
    shown = comparison_display(tests).loc["a", "place_table"]
    # only the judged (paired) test is starred, though Fisher's p is shown too
    assert shown == f"60 vs 25 (Fisher {row['p_value']:.2g}, McNemar {row['p_paired']:.2g}*)"
    fisher_only = comparison_display(unpaired).loc["a", "place_table"]
    assert fisher_only == f"60 vs 25 (Fisher {row['p_value']:.2g})"


def test_score_interval_is_seeded_and_covers_the_score():
    episodes = pd.concat([_agent("a", 9, 6, 20), _agent("d", 20, 0, 20)], ignore_index=True)
    scores = score_interval(episodes, {"a": "A"}, seed=3)
    pd.testing.assert_frame_equal(scores, score_interval(episodes, {"a": "A"}, seed=3))
    # an agent's interval does not depend on the agents before it
    alone = score_interval(episodes[episodes["agent"] == "a"], {"a": "A"}, seed=3)
    pd.testing.assert_frame_equal(alone, scores.loc[["A"]])
    second = pd.concat([_agent("b", 2, 1, 7), episodes], ignore_index=True)
    pd.testing.assert_frame_equal(score_interval(second, {"a": "A"}, seed=3).loc[["A"]], alone)
    assert list(scores.index) == ["A", "d"]
    a, d = scores.loc["A"], scores.loc["d"]
    assert a["ci_low"] < a["score"] < a["ci_high"]
    # every episode alike: every resample is the sample, the interval is the score itself
    assert d["ci_low"] == pytest.approx(d["score"]) == pytest.approx(d["ci_high"])


def test_comparison_display_keeps_reached_milestones_in_tech_tree_order():
    # b reaches coal without stone (Crafter allows it); a pair's columns still follow the tree
    stats = [{"length": 5, "reward": 0.0, "achievement_collect_coal": 1}] * 3 + [
        {"length": 5, "reward": 0.0, "achievement_collect_stone": 1}
    ]
    episodes = pd.concat(
        [episode_rows("a", stats[3:] * 10), episode_rows("b", stats[:3] * 10 + stats[3:])],
        ignore_index=True,
    )
    chain = ("collect_wood", "collect_stone", "collect_coal")
    tests = pairwise_tests(episodes, [("b", "a")], chain, {})
    shown = comparison_display(tests)
    assert list(shown.columns) == ["versus", "score", "collect_stone", "collect_coal"]
    row = shown.loc["b"]
    assert row["versus"] == "a"
    coal, stone = row["collect_coal"], row["collect_stone"]
    assert coal.startswith("97 vs 0 (Fisher ") and coal.endswith("*)")  # no seeds: Fisher judges
    assert stone.startswith("3 vs 100 (Fisher ") and stone.endswith("*)")
    assert re.fullmatch(r"[-+]\d+\.\d\d \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", row["score"])
