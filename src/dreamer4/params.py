"""params.yaml: `defaults` plus named `profiles` that overlay them, the single source of every
stage's paths and settings.

A profile is merged over `defaults` by `merge` (mappings key by key, any other value replaced),
as danijar/dreamerv3's configs.yaml does. Every key exists in `defaults`, so an overlay key that
is not there is a typo and an error; the exceptions are a stage's `train:` block (any engine key
of `train`, checked by `TrainConfig`) and mappings that are empty in `defaults` (free-form). A
stage reads its merged section through `Section`, which names the key of any value that is
missing or out of range: no stage carries a fallback value of its own.

The active profile is, in order: `--profile` on the command line, `$DREAMER4_PROFILE`, the
`profile:` key of params.yaml. `dvc exp run -S profile=crafter` therefore switches every stage.
dvc.yaml makes each stage depend on `defaults.<stage>` and `profiles.<profile>.<stage>`; DVC
cannot depend on a key that is absent, so every profile has a block per stage, `{}` where it
keeps the defaults (`load_profile` says which one is missing).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from dreamer4.errors import StageError

DEFAULT_PARAMS = Path("params.yaml")
STAGE_SECTIONS = (
    "train",
    "collect",
    "ingest",
    "train_tokenizer",
    "encode",
    "train_dynamics",
    "finetune_agent",
    "train_policy",
    "imagine",
    "evaluate",
)
FREE_FORM = ("train",)  # blocks that may set any key of the engine's `train` (TrainConfig checks)


class ParamsError(StageError):
    """params.yaml is missing something a stage needs; the message names file and key."""


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`overlay` deep-merged over `base`: mappings merge key by key, other values replace.

    A key of `overlay` that `base` lacks is an error naming it (`where` is the dotted path of
    `base`), unless `base` is empty there or the key sits in a block named in `FREE_FORM`."""
    free = not base or where.rsplit(".", 1)[-1] in FREE_FORM
    out = dict(base)
    for key, value in overlay.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in base:
            if not free:
                raise ParamsError(f"{name}: not a key of the defaults (a typo?)")
            out[key] = value
        elif isinstance(base[key], Mapping) and isinstance(value, Mapping):
            out[key] = merge(base[key], value, name)
        elif isinstance(base[key], Mapping) and value is not None:
            raise ParamsError(f"{name}: must be a mapping like the defaults, not {value!r}")
        else:
            out[key] = value
    return out


def read_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"{path}: params file not found (run from the repository root or pass --params)"
        )
    return yaml.safe_load(path.read_text()) or {}


def profile_name(params: Mapping[str, Any], profile: str | None = None) -> str:
    return str(profile or os.environ.get("DREAMER4_PROFILE") or params.get("profile"))


def load_profile(path: Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """The active profile merged over `defaults`, plus `paths` and `profile` (its name)."""
    params = read_params(path)
    name = profile_name(params, profile)
    profiles = params.get("profiles") or {}
    if name not in profiles:
        raise ParamsError(f"{path}: no profile {name!r} under `profiles` (have {sorted(profiles)})")
    overlay = profiles[name] or {}
    defaults = params.get("defaults") or {}
    if missing := [s for s in defaults if s in STAGE_SECTIONS and s not in overlay]:
        raise ParamsError(
            f"{path}: profile {name!r} has no block for {missing}: DVC tracks each stage's "
            "block of the active profile, so write `<stage>: {}` where it keeps the defaults"
        )
    try:
        merged = merge(defaults, overlay, "")
    except ParamsError as err:
        raise ParamsError(f"{path}: profiles.{name}.{err}") from None
    return {**merged, "paths": params.get("paths") or {}, "profile": name}


class Section(Mapping[str, Any]):
    """One merged section of the active profile; a missing or bad value names its key."""

    def __init__(self, values: Mapping[str, Any], where: str, source: str) -> None:
        self._values, self.where, self.source = dict(values), where, source

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise ParamsError(f"{self.source}: {self._name(key)}: missing")
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def sub(self, key: str) -> Section:
        """The mapping at `key` as a Section."""
        value = self[key]
        if not isinstance(value, Mapping):
            raise ParamsError(f"{self.source}: {self._name(key)}: must be a mapping")
        return Section(value, self._name(key), self.source)

    def check(self, key: str, ok: Callable[[Any], bool], rule: str, cli: Any = None) -> Any:
        """`cli` if given, else the value at `key`; either must satisfy `ok` (`rule` says how)."""
        value = self[key] if cli is None else cli
        try:
            good = bool(ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            origin = "the command line" if cli is not None else self._name(key)
            raise ParamsError(f"{self.source}: {origin} = {value!r}: {rule}")
        return value

    def fraction(self, key: str, cli: Any = None) -> float:
        return float(self.check(key, lambda v: 0 <= float(v) <= 1, "must be in [0, 1]", cli))

    def count(self, key: str, cli: Any = None, low: int = 1) -> int:
        return int(
            self.check(key, lambda v: int(v) == v and v >= low, f"must be an integer >= {low}", cli)
        )

    def config(self, cls: type, derived: Mapping[str, Any] | None = None) -> Any:
        """The dataclass `cls` from this section: every field not in `derived` (values the data
        decides) must be here, no other key may be."""
        derived = dict(derived or {})
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(self) - names):
            raise ParamsError(f"{self.source}: {self.where}: unknown keys {unknown}")
        if missing := sorted(names - set(self) - set(derived)):
            raise ParamsError(f"{self.source}: {self.where}: missing keys {missing}")
        if clash := sorted(set(self) & set(derived)):
            raise ParamsError(
                f"{self.source}: {self.where}: {clash} come from the data, not from params"
            )
        try:
            return cls(**self._values, **derived)
        except (TypeError, ValueError) as err:
            raise ParamsError(f"{self.source}: {self.where}: {err}") from None


class Settings:
    """What one stage reads from params.yaml: its own merged section, the other sections it
    needs and the shared `paths`; a command-line flag overrides a path."""

    def __init__(self, profile: Mapping[str, Any], stage: str, source: str) -> None:
        self.profile, self.stage, self.source = profile, stage, source
        self.own = self.section(stage)
        self.paths = Section(profile["paths"], "paths", source)

    @classmethod
    def load(cls, args: Any, stage: str) -> Settings:
        """`args.params` and `args.profile` from the command line (see `cli.py`). Without a
        params file a stage runs on its command-line options alone: every value it reads then
        has to come from there, and one that does not is an error naming its key."""
        if not Path(args.params).is_file():
            return cls({"paths": {}}, stage, f"{args.params} (absent: pass it on the command line)")
        profile = load_profile(Path(args.params), args.profile)
        return cls(profile, stage, f"{args.params} (profile {profile['profile']})")

    def section(self, name: str) -> Section:
        if name not in self.profile and len(self.profile) > 1:
            raise ParamsError(f"{self.source}: no `{name}` section in `defaults`")
        return Section(self.profile.get(name, {}), name, self.source)

    def path(self, key: str, flag: Any = None) -> Path:
        """`flag` (a command-line path) if given, else `paths.<key>`."""
        return Path(flag) if flag is not None else Path(self.paths[key])


def known_keys(cls: Any, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` for the dataclass `cls`; a key it lacks is an error naming `where`."""
    if unknown := set(values) - {f.name for f in dataclasses.fields(cls)}:
        raise ParamsError(f"params.yaml: {where}: unknown keys {sorted(unknown)}")
    return dict(values)
