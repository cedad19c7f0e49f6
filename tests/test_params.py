"""params.yaml as defaults plus overlays: the merge, the errors that name a key, and DVC rerunning
exactly the stages whose merged section a change touches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dreamer4.params import ParamsError, Section, load_profile, merge
from dreamer4.train.config import TrainConfig
from orchestration import dvc_cli
from tests.conftest import REPO, full_profile


def test_merge_is_deep_and_rejects_keys_the_defaults_lack() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": None, "train": {"lr": 1.0}, "free": {}}
    merged = merge(base, {"a": {"c": [3]}, "d": 2, "train": {"steps": 5}, "free": {"x": 1}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 2, "train": {"lr": 1.0, "steps": 5},
                      "free": {"x": 1}}  # fmt: skip
    assert base["a"] == {"b": 1, "c": [1, 2]}  # not modified in place
    with pytest.raises(ParamsError, match=r"a\.typo: not a key of the defaults"):
        merge(base, {"a": {"typo": 1}})
    with pytest.raises(ParamsError, match=r"a: must be a mapping"):
        merge(base, {"a": 3})


def test_every_profile_merges_and_lists_only_what_it_changes() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = params["defaults"]

    def check(over: dict, base: dict, where: str) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                check(value, base[key], f"{where}.{key}")
            elif key in base:
                assert value != base[key], f"{where}.{key} repeats the default"

    for name, overlay in params["profiles"].items():
        full_profile(name)  # merges without error
        check(overlay, defaults, f"profiles.{name}")
    assert full_profile("tiny") == defaults  # tiny: the defaults as they are


def test_no_profile_sets_a_shared_train_key_every_stage_overrides() -> None:
    """A stage's own `train` block wins over the shared one (defaults' stage blocks included):
    a shared key that every training stage sets again would silently do nothing."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, overlay in params["profiles"].items():
        merged = full_profile(name)
        stages = [s for s, block in merged.items() if isinstance(block, dict) and "train" in block]
        assert stages, name
        for key in overlay.get("train", {}):
            assert any(key not in merged[s]["train"] for s in stages), (
                f"profiles.{name}.train.{key}: every stage's train block sets it again"
            )


def test_a_profile_without_a_stage_block_is_an_error_naming_it(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["profiles"]["tiny"]["encode"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"profile 'tiny' has no block for \['encode'\]"):
        load_profile(path, "tiny")
    params["profiles"]["tiny"]["encode"] = {"batchh": 3}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"profiles\.tiny\.encode\.batchh: not a key"):
        load_profile(path, "tiny")


def test_a_missing_or_bad_value_names_its_key() -> None:
    sec = Section({"n": 0, "f": 1.5, "sub": {"x": 1}}, "stage", "params.yaml (profile p)")
    with pytest.raises(ParamsError, match=r"params.yaml \(profile p\): stage\.gone: missing"):
        sec["gone"]
    with pytest.raises(ParamsError, match=r"stage\.n = 0: must be an integer >= 1"):
        sec.count("n")
    with pytest.raises(ParamsError, match=r"stage\.f = 1.5: must be in \[0, 1\]"):
        sec.fraction("f")
    with pytest.raises(ParamsError, match=r"stage\.sub\.y: missing"):
        sec.sub("sub")["y"]


def test_train_settings_name_the_key_of_a_bad_or_missing_value() -> None:
    engine = Section(full_profile("tiny")["train"], "train", "params.yaml (profile tiny)")
    own = Section({"lr": -1e-3}, "train_tokenizer.train", "params.yaml (profile tiny)")
    with pytest.raises(ParamsError, match=r"train_tokenizer\.train\.lr = -0.001: must be > 0"):
        TrainConfig.from_params(engine, own, complete=True)
    partial = Section({"lr": 1e-3}, "train", "params.yaml (profile tiny)")
    with pytest.raises(ParamsError, match=r"train: missing keys \[.*'steps'"):
        TrainConfig.from_params(partial, complete=True)
    assert TrainConfig.from_params(engine, complete=True, steps=3).steps == 3


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [str(dvc), *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _changed_params(root: Path) -> set[str]:
    """Stages whose params `dvc status` reports changed."""
    out = _dvc(root, "status", "--json")
    assert out.returncode == 0, out.stderr
    changed = set()
    for stage, entries in json.loads(out.stdout or "{}").items():
        for entry in entries:
            deps = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            if any(str(k).endswith("params.yaml") for k in deps):
                changed.add(stage)
    return changed


@pytest.fixture()
def params_repo(tmp_path: Path) -> Path:
    """dvc.yaml and params.yaml of the repository with a dvc.lock recording every stage's
    current params (DVC resolves them): `dvc status` then reports exactly the params changed."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    stages = {}
    for stage in dvc_cli.stages(root):  # as DVC resolves them, with their params' values
        stages[stage["name"]] = {"cmd": stage["cmd"], "params": stage["param_values"]}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    assert _changed_params(root) == set()
    return root


def _edit(root: Path, *keys: str, value: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_reruns_exactly_the_stages_a_default_or_an_overlay_value_touches(
    params_repo: Path,
) -> None:
    root = params_repo
    _edit(root, "defaults", "encode", "batch", value=7)  # a default
    assert _changed_params(root) == {"encode"}
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    # an overlay value of the active profile, in a block that was empty
    _edit(root, "profiles", "tiny", "train_dynamics", value={"shortcut": {"context_noise": 0.2}})
    assert _changed_params(root) == {"train_dynamics", "bc_baseline"}
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    # another profile's overlay is not the active profile's
    _edit(root, "profiles", "crafter", "encode", "batch", value=7)
    assert _changed_params(root) == set()
    # the engine section reaches every training stage
    _edit(root, "defaults", "train", "lr", value=1e-4)
    assert _changed_params(root) == {
        "train_tokenizer", "train_dynamics", "finetune_agent", "bc_baseline", "train_policy"
    }  # fmt: skip
