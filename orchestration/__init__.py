"""Dagster code location `orchestration`: one asset per dvc.yaml stage, materialized through DVC."""
