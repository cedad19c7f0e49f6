"""Kill rate per module of the last `make mutate` (mutmut's results under mutants/).

Counts the mutants whose names match the given fnmatch patterns (the ones `make mutate` runs:
whole paper modules, the loss functions only of the stage modules), per module:

    python bench/mutation_table.py 'dreamer4.pmpo.*'

Killed includes timeouts (the mutant hung or ran 30× longer than the tests) and crashes;
"no tests", "not checked" and mutmut's other statuses count against the rate. With
--survivors, also lists the mutants not killed (`mutmut show NAME` prints a mutant's diff).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

from mutmut.stats import status_by_exit_code

# mutmut's own reading of a mutant's exit code; killed = the tests stopped it, by failing, by
# timing out or by crashing (segfault). Everything but "killed" counts against the rate.
STOPPED = {"killed", "timeout", "segfault", "caught by type check"}


def verdict(code: int | None) -> str:
    status = status_by_exit_code.get(code, f"exit code {code}")
    return "killed" if status in STOPPED else status


def results(root: Path, patterns: list[str]) -> dict[str, str]:
    """Mutant name → verdict, for the mutants matching any pattern."""
    out: dict[str, str] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if any(fnmatch(name, p) for p in patterns):
                out[name] = verdict(code)
    return out


def module_of(name: str) -> str:
    """'dreamer4.pmpo.x_pmpo_loss__mutmut_3' → 'dreamer4.pmpo' (functions start with x_ / xǁ)."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("patterns", nargs="+", help="mutant-name patterns (fnmatch)")
    p.add_argument("--root", type=Path, default=Path("mutants"))
    p.add_argument("--survivors", action="store_true", help="also list the surviving mutants")
    args = p.parse_args()
    found = results(args.root, args.patterns)
    if not found:
        raise SystemExit(f"no mutant results under {args.root}/ match: run `make mutate` first")
    by_module: dict[str, Counter[str]] = {}
    for name, v in found.items():
        by_module.setdefault(module_of(name), Counter())[v] += 1
    print(f"| {'module':<32} | killed | survived | other | total | kill rate |")
    print(f"|{'-' * 34}|-------:|---------:|------:|------:|----------:|")
    for module, c in sorted(by_module.items()):
        total = sum(c.values())
        other = total - c["killed"] - c["survived"]
        rate = 100 * c["killed"] / total
        print(
            f"| {module:<32} | {c['killed']:>6} | {c['survived']:>8} | {other:>5} | {total:>5} "
            f"| {rate:>8.1f} % |"
        )
    if args.survivors:
        for name, v in sorted(found.items()):
            if v != "killed":
                print(f"{v:>10}  {name}")


if __name__ == "__main__":
    main()
