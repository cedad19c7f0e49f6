"""`dvc.yaml` lists exactly the code each stage runs, so `dvc repro` reruns exactly the stages a
code change can affect (and what is downstream), and never calls stale outputs up to date.

A stage's code is the static import closure inside `src/dreamer4` of the command it runs: the
`dreamer4` entry point (`cli.py`) and the stage module its subcommand names, then every
`dreamer4` import in every file reached — imports inside functions included (the stages
import lazily), `if TYPE_CHECKING:` blocks excluded (they never run), and the `__init__.py` of
every package on the way (importing `dreamer4.nn.attention` runs `dreamer4/nn/__init__.py`).
A directory dep stands for every `.py` file under it, so it is allowed only where the stage
reaches all of them. `dreamer4.cli` imports the module of the subcommand it runs and no other
(checked below by importing each stage's command in a fresh interpreter). Deps that are not
Python (`infra/deepspeed` configs, data) are not checked here.
"""

from __future__ import annotations

import ast
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from dreamer4.cli import COMMANDS
from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "dreamer4"


def _module_file(name: str) -> Path | None:
    """The file of module `name` under src/, or None (not ours, or a name inside a module)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_packages(name: str) -> list[Path]:
    """The file of module `name` and the `__init__.py` of each package above it (all run)."""
    parts = name.split(".")
    files = [_module_file(".".join(parts[: i + 1])) for i in range(len(parts))]
    return [f for f in files if f is not None]


def _runs(node: ast.AST) -> bool:
    """False for an `if TYPE_CHECKING:` block (only type checkers read it)."""
    test = getattr(node, "test", None)
    return not (
        isinstance(node, ast.If)
        and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        )
    )


def _imported(path: Path) -> set[Path]:
    """Files under src/dreamer4 that the imports anywhere in `path` load."""
    package = ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    found: set[Path] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            # an `if TYPE_CHECKING:` body never runs, its `else:` does
            todo.extend([child] if _runs(child) else child.orelse)
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from a import b`: b may be a submodule of a, or a name defined in a
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name == "dreamer4" or name.startswith("dreamer4."):
                found.update(_with_packages(name))
    return found


@cache
def closure(module: str) -> frozenset[Path]:
    """Every file of src/dreamer4 that running `module` (and its entry point) can execute."""
    seen: set[Path] = set()
    todo = [*_with_packages(module), *_with_packages("dreamer4.cli")]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imported(path) - seen)
    return frozenset(seen)


def stage_module(cmd: str) -> str:
    """The module of a stage's `dreamer4 <subcommand> …` command (as `dreamer4.cli` maps it)."""
    words = cmd.split()
    if words[0] != "dreamer4":
        raise AssertionError(f"dvc.yaml: stage command {cmd!r} does not run `dreamer4`")
    subcommand = words[1]
    by_name = {**COMMANDS, **{k.replace("-", "_"): v for k, v in COMMANDS.items()}}
    if subcommand not in by_name:
        raise AssertionError(f"dvc.yaml: {cmd!r}: no `dreamer4 {subcommand}` subcommand")
    return by_name[subcommand][0]


def listed_code(deps: list[str]) -> tuple[set[Path], list[str]]:
    """The source files a stage's deps stand for, and the directory deps among them."""
    files: set[Path] = set()
    folders = [dep for dep in deps if dep.startswith("src/") and (REPO / dep).is_dir()]
    for dep in deps:
        if dep in folders:
            files.update(p for p in (REPO / dep).rglob("*.py") if "__pycache__" not in p.parts)
        elif dep.startswith("src/"):
            files.add(REPO / dep)
    return files, folders


def coverage_problems(dvc_yaml: dict) -> list[str]:
    """One line per stage dep that is missing (code the stage runs) or extra (code it never
    runs, which would rerun it needlessly; a directory dep must be reached whole)."""
    problems = []
    for name, stage in dvc_yaml["stages"].items():
        runs = closure(stage_module(stage["cmd"]))
        listed, folders = listed_code(stage.get("deps", []))
        for path in sorted(runs - listed):
            problems.append(f"stage {name}: runs {path.relative_to(REPO)}, not in its deps")
        for path in sorted(listed - runs):
            where = next((f for f in folders if path.is_relative_to(REPO / f)), None)
            via = f" (through the directory dep {where})" if where else ""
            problems.append(f"stage {name}: lists {path.relative_to(REPO)}{via}, never runs it")
    return problems


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_the_closure_follows_lazy_relative_and_package_imports():
    """The closure sees what the stages really do: imports inside functions, `__init__.py`
    re-exports (dreamer4.nn), and not TYPE_CHECKING-only imports."""
    rel = {p.relative_to(PACKAGE).as_posix() for p in closure("dreamer4.stages.train_dynamics")}
    assert {"cli.py", "errors.py", "__init__.py", "stages/__init__.py"} <= rel
    assert "shortcut.py" in rel  # imported inside a function
    assert {"nn/__init__.py", "nn/attention.py", "nn/transformer.py"} <= rel  # via `dreamer4.nn`
    assert "train/engine.py" in rel and "stages/collect.py" not in rel
    collect = {p.relative_to(PACKAGE).as_posix() for p in closure("dreamer4.stages.collect")}
    assert "tokenizer.py" not in collect and "envs/scripted_player.py" in collect


def test_every_stage_lists_exactly_the_code_it_runs():
    problems = coverage_problems(_dvc_yaml())
    assert not problems, "dvc.yaml code deps:\n" + "\n".join(problems)


LOADED = """
import json, sys
from dreamer4.cli import build_parser
build_parser(sys.argv[1]).parse_args(sys.argv[1:])
ours = [m for n, m in sys.modules.items() if n.split(".")[0] == "dreamer4"]
print(json.dumps([m.__file__ for m in ours if m.__file__]))  # namespace packages have none
"""


@pytest.mark.slow  # ten fresh interpreters
def test_a_stage_command_loads_only_code_in_its_closure():
    """What the `dreamer4` entry point really imports to parse a stage's command (the stage
    module and its module-level imports) lies inside the static closure: the static reading
    does not miss a dynamic import, and the CLI does not pull in the other stages' modules."""
    import json
    import sys

    stages = _dvc_yaml()["stages"]
    # one process per stage, all at once: each is mostly imports (about 6 s), both cores busy
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", LOADED, *stage["cmd"].split()[1:2]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, stage in stages.items()
    }
    try:
        for name, stage in stages.items():
            out, err = procs[name].communicate(timeout=300)
            assert procs[name].returncode == 0, (name, err)
            loaded = {Path(f) for f in json.loads(out.splitlines()[-1])}
            assert PACKAGE / "stages" / "collect.py" not in loaded or name == "collect", name
            allowed = closure(stage_module(stage["cmd"]))
            assert loaded <= allowed, (name, loaded - allowed)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("stage", ["finetune_agent", "imagine", "evaluate"])
def test_removing_a_code_dep_is_caught(stage: str):
    """The check fails on the bug it names: every code dep of a stage is needed."""
    pipeline = _dvc_yaml()
    deps = pipeline["stages"][stage]["deps"]
    code = [d for d in deps if d.startswith("src/")]
    for dep in code:
        pipeline["stages"][stage]["deps"] = [d for d in deps if d != dep]
        problems = coverage_problems(pipeline)
        assert any(p.startswith(f"stage {stage}: runs {dep}") for p in problems), dep
    pipeline["stages"][stage]["deps"] = [*deps, "src/dreamer4/envs/play.py"]
    assert f"stage {stage}: lists src/dreamer4/envs/play.py, never runs it" in coverage_problems(
        pipeline
    )


def test_dvc_status_marks_exactly_the_stages_that_run_the_changed_file(
    trained_repo: tuple[Path, str],
):
    """In a reproduced pipeline, editing one source file makes `dvc status` report changed
    deps for exactly the stages whose closure holds it; restoring it makes all clean again."""
    root = trained_repo[0]
    target = root / "src/dreamer4/shortcut.py"
    expected = {
        name
        for name, stage in _dvc_yaml()["stages"].items()
        if PACKAGE / "shortcut.py" in closure(stage_module(stage["cmd"]))
    }
    assert {"train_dynamics", "bc_baseline"} <= expected and not {"collect", "encode"} & expected
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# an edit\n")
        changed = _dvc_changed(root)
    finally:
        target.write_bytes(original)
    assert changed == expected
    assert _dvc_changed(root) == set()


def _dvc_changed(root: Path) -> set[str]:
    """Stages that `dvc status --json` reports with changed deps."""
    import json

    proc = subprocess.run(
        ["dvc", "status", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(proc.stdout or "{}")
    return {
        name.rpartition(":")[2]
        for name, changes in report.items()
        if any("changed deps" in c for c in changes if isinstance(c, dict))
    }
