"""Training metrics: a Prometheus exporter, a pushgateway option, and DVC plots and metrics.

Rank 0 serves `/metrics` on 127.0.0.1 (port from params; `infra/prometheus/prometheus.yml`
scrapes it, `infra/grafana/dreamer4-training.json` charts it). Batch jobs that end before a
scrape can also push to a Prometheus pushgateway. The same numbers go to
`<metrics dir>/train.tsv` (a DVC plot, one row per log step) and `<metrics dir>/summary.json`
(DVC metrics: the final values).

The TSV is written here rather than with dvclive: a resumed job must rewind the curves to the
checkpoint step (steps after it are recomputed), while dvclive's resume appends after the last
logged step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, start_http_server

from dreamer4.errors import StageError
from dreamer4.files import atomic_path, atomic_write_text

PREFIX = "dreamer4_train"


class Exporter:
    """The Prometheus gauges of one training job, served and/or pushed."""

    def __init__(
        self, stage: str, host: str, port: int | None, pushgateway: str | None = None
    ) -> None:
        self.stage, self.pushgateway = stage, pushgateway
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, ["stage", *labels], registry=self.registry)

        self.loss = gauge("loss", "Training loss per term, mean over ranks", "term")
        self.eval = gauge("eval", "Held-out evaluation metrics of the job", "name")
        self.scalars = {
            "step": gauge("step", "Optimizer steps done"),
            "grad_norm": gauge("grad_norm", "Global gradient norm before clipping"),
            "lr": gauge("learning_rate", "Learning rate of the first parameter group"),
            "steps_per_second": gauge("steps_per_second", "Optimizer steps per second"),
            "samples_per_second": gauge("samples_per_second", "Sequences per second, all ranks"),
            "tokens_per_second": gauge("tokens_per_second", "Model tokens per second, all ranks"),
            "data_wait": gauge("data_wait_seconds", "Seconds per step spent waiting for data"),
            "gpu_memory": gauge("gpu_memory_bytes", "Peak GPU memory allocated on rank 0"),
            "minutes": gauge("wall_minutes", "Wall-clock minutes of training, resumes included"),
        }
        self.server = None
        self.url = None
        if port is not None:
            try:
                self.server, _ = start_http_server(port, addr=host, registry=self.registry)
            except OSError as err:
                raise StageError(
                    f"metrics exporter: cannot listen on {host}:{port} ({err.strerror}); set "
                    "train.metrics_port to a free port, 0 for any free port, or null for none"
                ) from err
            self.url = f"http://{host}:{self.server.server_port}/metrics"

    def update(
        self,
        step: int,
        losses: dict[str, float],
        scalars: dict[str, float],
        evals: dict[str, float] | None = None,
    ) -> None:
        self.scalars["step"].labels(self.stage).set(step)
        for name, value in (evals or {}).items():
            self.eval.labels(self.stage, name).set(value)
        for term, value in losses.items():
            self.loss.labels(self.stage, term).set(value)
        for name, value in scalars.items():
            if name in self.scalars and value is not None:
                self.scalars[name].labels(self.stage).set(value)
        if self.pushgateway:
            push_to_gateway(self.pushgateway, job=f"dreamer4_{self.stage}", registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# Wall-clock figures: in `speed.tsv` beside the DVC plot, never in it, so the versioned outputs
# of a training stage are the same on every rerun of the same inputs.
# `minutes`: wall-clock minutes of training so far (a resumed run adds to its checkpoint's), the
# x axis of held-out metrics against time.
SPEED = (
    "steps_per_second",
    "samples_per_second",
    "tokens_per_second",
    "data_wait",
    "gpu_memory",
    "minutes",
)


class History:
    """The DVC plot (`train.tsv`), DVC metrics (`summary.json`) and `speed.tsv` of a job."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tsv, self.speed_tsv = self.folder / "train.tsv", self.folder / "speed.tsv"
        rows = pd.DataFrame({"step": pd.Series(dtype="int64")})
        for path in (self.tsv, self.speed_tsv):
            if path.is_file():
                rows = rows.merge(pd.read_csv(path, sep="\t"), on="step", how="outer")
        # steps after the checkpoint are trained again: drop their rows
        self.rows: list[dict[str, Any]] = rows[rows["step"] <= resume_step].to_dict("records")
        self._write()

    def minutes(self) -> float:
        """Wall-clock minutes recorded up to the resume step (0 for a fresh run)."""
        done = [r["minutes"] for r in self.rows if pd.notna(r.get("minutes"))]
        return float(done[-1]) if done else 0.0

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        table = pd.DataFrame(self.rows, columns=None if self.rows else ["step"])
        speed = [c for c in table.columns if c in SPEED]
        for path, part in (
            (self.tsv, table.drop(columns=speed)),
            (self.speed_tsv, table[["step", *speed]]),
        ):
            with atomic_path(path) as tmp:
                part.to_csv(tmp, sep="\t", index=False, float_format="%.6g")

    def summary(self, values: dict[str, Any]) -> None:
        atomic_write_text(
            self.folder / "summary.json", json.dumps(values, indent=2, sort_keys=True) + "\n"
        )
