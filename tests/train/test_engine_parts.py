"""Engine parts without a job: settings, DeepSpeed config, RNG states, curves, pushgateway."""

from __future__ import annotations

import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dreamer4.params import ParamsError
from dreamer4.train import checkpoint as ckpt
from dreamer4.train.config import TrainConfig, deepspeed_config, resolve_precision
from dreamer4.train.metrics import Exporter, History


def test_settings_merge_params_then_command_line() -> None:
    cfg = TrainConfig.from_params(
        {"lr": 1e-3, "zero_stage": 3}, {"zero_stage": 1}, steps=7, nproc=None
    )
    assert (cfg.lr, cfg.zero_stage, cfg.steps, cfg.nproc) == (1e-3, 1, 7, 1)
    with pytest.raises(ParamsError, match=r"learning_rate: unknown train setting"):
        TrainConfig.from_params({"learning_rate": 1.0})
    with pytest.raises(ParamsError, match="zero_stage = 4: must be 0-3"):
        TrainConfig(zero_stage=4)


def test_deepspeed_config_is_the_zero_file_plus_params() -> None:
    cfg = TrainConfig(
        zero_stage=3, micro_batch=5, grad_accum=2, lr=2e-4, steps=90, warmup_steps=9, grad_clip=0.5
    )
    ds = deepspeed_config(cfg, "bf16")
    assert ds["zero_optimization"]["stage"] == 3  # from infra/deepspeed/zero3.json
    assert "stage3_prefetch_bucket_size" in ds["zero_optimization"]
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (5, 2)
    assert ds["optimizer"]["params"]["lr"] == 2e-4 and ds["gradient_clipping"] == 0.5
    assert ds["scheduler"]["params"]["total_num_steps"] == 90
    assert ds["bf16"]["enabled"] and not deepspeed_config(cfg, "bf16-autocast")["bf16"]["enabled"]
    assert resolve_precision("auto", cuda=True) == "bf16"
    assert resolve_precision("fp32", cuda=True) == "fp32"


def test_rng_states_round_trip_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    ckpt.save_tensors(tmp_path / "rng.safetensors", ckpt.rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(ckpt.load_file(tmp_path / "rng.safetensors"))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_curves_rewind_to_the_resumed_step(tmp_path: Path) -> None:
    history = History(tmp_path, resume_step=0)
    for step in (10, 20, 30):
        history.append({"step": step, "loss/loss": 1.0 / step})
    resumed = History(tmp_path, resume_step=20)  # checkpoint at 20: step 30 is trained again
    resumed.append({"step": 30, "loss/loss": 0.5})
    curve = pd.read_csv(tmp_path / "train.tsv", sep="\t")
    assert curve["step"].tolist() == [10, 20, 30] and curve["loss/loss"].iloc[-1] == 0.5


def test_metrics_pushed_to_a_pushgateway_over_loopback() -> None:
    received: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # the Pushgateway API: PUT /metrics/job/<job>
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        exporter = Exporter("train_x", "127.0.0.1", None, pushgateway=url)
        exporter.update(3, {"loss": 0.25}, {"lr": 1e-3})
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, body),) = received
    assert (method, path) == ("PUT", "/metrics/job/dreamer4_train_x")
    assert b'dreamer4_train_loss{stage="train_x",term="loss"} 0.25' in body


def test_busy_metrics_port_is_a_clear_error() -> None:
    from dreamer4.errors import StageError

    first = Exporter("train_x", "127.0.0.1", 0)
    try:
        port = first.server.server_port
        with pytest.raises(StageError, match=f"cannot listen on 127.0.0.1:{port}"):
            Exporter("train_y", "127.0.0.1", port)
    finally:
        first.close()


def test_ema_applied_swaps_averages_in_and_restores_weights() -> None:
    from dreamer4.train.ema import Ema

    model = torch.nn.Linear(3, 2)
    ema = Ema(model, decay=0.5, zero3=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()  # n=1: decay min(0.5, 2/11) = 2/11, the average moves 9/11 of the way
    trained = model.weight.detach().clone()
    expected = start + (1 - 2 / 11) * 1.0
    with ema.applied():
        assert torch.allclose(model.weight, expected)
    assert torch.equal(model.weight, trained)


def test_fingerprint_changes_with_config_code_and_data(tmp_path: Path) -> None:
    import dreamer4
    from dreamer4.train.engine import fingerprint
    from dreamer4.train.reference import ReferenceConfig, ReferenceJob
    from tests.conftest import make_episode_dataset

    data = make_episode_dataset(tmp_path / "d", episodes=2, length=10)
    job = ReferenceJob(ReferenceConfig(), 16)
    base = fingerprint(job, TrainConfig(), data)
    assert fingerprint(job, TrainConfig(metrics_port=1), data) == base  # operational only
    assert fingerprint(job, TrainConfig(lr=1.0), data) != base
    assert fingerprint(ReferenceJob(ReferenceConfig(width=64), 16), TrainConfig(), data) != base
    extra = Path(dreamer4.__file__).parent / "_fingerprint_probe.py"
    try:
        extra.write_text("# a code change\n")
        assert fingerprint(job, TrainConfig(), data) != base
    finally:
        extra.unlink()
    assert fingerprint(job, TrainConfig(), data) == base
    chunk = next((data / "frames").glob("chunk-*.npy"))
    chunk.write_bytes(chunk.read_bytes())  # rewritten data (new mtime) never resumes
    assert fingerprint(job, TrainConfig(), data) != base
