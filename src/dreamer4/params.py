"""Profiles from params.yaml: the single source of every stage's paths and settings.

The active profile is, in order: `--profile` on the command line, `$DREAMER4_PROFILE`, the
`profile:` key of params.yaml. `dvc exp run -S profile=crafter` therefore switches every stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from dreamer4.errors import StageError

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(StageError):
    """params.yaml is missing something a stage needs; the message names file and key."""


def load_profile(path: Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """The active profile's settings plus `paths` and `profile` (its name)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            f"{path}: params file not found (run from the repository root or pass --params)"
        )
    params = yaml.safe_load(path.read_text()) or {}
    name = profile or os.environ.get("DREAMER4_PROFILE") or params.get("profile")
    profiles = params.get("profiles", {})
    if name not in profiles:
        raise ParamsError(f"{path}: no profile {name!r} under `profiles` (have {sorted(profiles)})")
    return {**profiles[name], "paths": params.get("paths", {}), "profile": name}


def section(path: Path, profile: str | None, name: str) -> dict[str, Any]:
    """One stage's section of the active profile, or {} when params.yaml is absent.

    Absent params are fine when every setting is given on the command line; a missing section
    in an existing file is an error.
    """
    if not Path(path).is_file():
        return {"paths": {}}
    prof = load_profile(path, profile)
    if name not in prof:
        raise ParamsError(f"{path}: profile {prof['profile']!r} has no `{name}` section")
    return {**prof[name], "paths": prof["paths"]}


def setting(cli_value: Any, params: dict[str, Any], key: str, stage: str) -> Any:
    """An explicit command-line value, else the profile's; neither is an error naming the key."""
    if cli_value is not None:
        return cli_value
    if key in params:
        return params[key]
    raise ParamsError(
        f"{stage}: no value for {key!r}: pass it on the command line or set it in params.yaml"
    )


def known_keys(cls: Any, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` for the dataclass `cls`; a key it lacks is an error naming `where`."""
    from dataclasses import fields

    if unknown := set(values) - {f.name for f in fields(cls)}:
        raise ParamsError(f"params.yaml: {where}: unknown keys {sorted(unknown)}")
    return values
