"""`dreamer4 <stage>`: one subcommand per pipeline stage (the commands dvc.yaml runs) plus tools.

Stage modules are imported lazily so `dreamer4 --help` stays fast and a stage pulls in only
what it needs (torch, DeepSpeed and great-expectations are slow to import).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from dreamer4.errors import StageError

# subcommand -> (module, one-line help). Pipeline stages first, in dvc.yaml order.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("dreamer4.stages.collect", "stage collect → raw_episodes: record Crafter gameplay"),
    "ingest": ("dreamer4.stages.ingest", "stage ingest → episode_dataset: validate, resize, index"),
    "train-tokenizer": (
        "dreamer4.stages.train_tokenizer",
        "stage train_tokenizer → tokenizer: causal MAE tokenizer through the training engine",
    ),
    "encode": (
        "dreamer4.stages.encode",
        "stage encode → latent_tokens: tokenizer latents of every frame, causal, frame by frame",
    ),
    "train-dynamics": (
        "dreamer4.stages.train_dynamics",
        "stage train_dynamics → world_model: dynamics transformer by shortcut forcing",
    ),
    "finetune-agent": (
        "dreamer4.stages.finetune_agent",
        "stage finetune_agent → agent (phase 2): task tokens, BC policy and reward heads (MTP); "
        "with --scratch, stage bc_baseline → bc_agent",
    ),
    "train-policy": (
        "dreamer4.stages.train_policy",
        "stage train_policy → policy (phase 3): PMPO policy and TD(λ) value in imagination",
    ),
    "imagine": (
        "dreamer4.stages.imagine",
        "stage imagine → imagination_dataset: rollouts of the prior and trained policy",
    ),
    "evaluate": (
        "dreamer4.stages.evaluate",
        "stage evaluate → eval_report: every agent in the real game on held-out worlds (Crafter, "
        "or Minecraft through MineRL), the report",
    ),
    "train-reference": (
        "dreamer4.train.reference",
        "train the engine's reference model (checks a machine's DeepSpeed setup, measures speed)",
    ),
    "score": (
        "dreamer4.eval.crafter_score",
        "success rate per Crafter achievement and the Crafter score of stats.jsonl files",
    ),
    "play": (
        "dreamer4.play.server",
        "play real Crafter or inside the world model in a web page (http://127.0.0.1:8765/)",
    ),
    "player-report": (
        "dreamer4.envs.player_report",
        "success rate per Crafter achievement of the scripted player at full skill",
    ),
    "vpt-download": (
        "dreamer4.vpt_download",
        "download OpenAI's VPT Minecraft contractor recordings from an index file (resumable)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, with the stage options of `command` only: its module is
    the one stage module imported, so a stage runs no other stage's code (dvc.yaml lists exactly
    what each stage runs, tests/test_dvc_deps.py) and `dreamer4 --help` imports none."""
    parser = argparse.ArgumentParser(
        prog="dreamer4",
        description="Dreamer 4 pipeline stages. Each reads its settings from the active profile "
        "in params.yaml; explicit options override them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # `train-tokenizer` also answers to its dvc.yaml stage name `train_tokenizer`
        aliases = [name.replace("-", "_")] if "-" in name else []
        p = sub.add_parser(name, aliases=aliases, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        p.add_argument(
            "--profile", default=None, help="profile in params.yaml (default: its `profile`)"
        )
        p.set_defaults(_module=module)
        if command in (name, *aliases):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A stage must stay stoppable: DVC, Dagster and the training launcher stop work with
    # SIGTERM, and a disposition of "ignore" inherited from a parent would outlive them all.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args._argv = argv  # training stages re-run themselves under a launcher
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (StageError, FileNotFoundError) as err:
        print(f"dreamer4 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
