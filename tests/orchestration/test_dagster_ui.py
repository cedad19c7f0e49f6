"""The Dagster web UI in a real browser: the webserver on 127.0.0.1 shows every asset of the
graph in headless Chromium, and a materialization launched through its GraphQL API succeeds.

Runs start at once (the instance's DefaultRunCoordinator), so no daemon is needed; what the
test starts it stops (the webserver's process group), also when an assertion fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration import dvc_cli
from orchestration.dvc_graph import read_stages
from orchestration.record import lock_hashes
from tests.conftest import REPO

INSTANCE = """telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


@pytest.fixture
def webserver(trained_repo: tuple[Path, str], tmp_path: Path):
    """`dagster-webserver` for this project's code location over the session's trained
    repository (a fresh instance: it has recorded no materialization)."""
    repo = trained_repo[0]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    env = {**os.environ, "DAGSTER_HOME": str(home), "DREAMER4_REPO": str(repo)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    log = open(tmp_path / "webserver.log", "w")  # noqa: SIM115 (closed below)
    port_file = tmp_path / "webserver.port"  # written by the server: it binds port 0
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.orchestration.webserver", str(port_file),
         "orchestration.definitions", str(REPO)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # a shared 2-core machine loads the code slowly
        while True:
            try:
                port = int(port_file.read_text())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10):
                    break
            except (OSError, ValueError):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail((tmp_path / "webserver.log").read_text()[-3000:])
                time.sleep(1)
        yield repo, port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # and its code server, if still there
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


def test_asset_graph_in_chromium_and_a_materialization_succeeds(
    webserver, chromium, tmp_path: Path
):
    from playwright.sync_api import expect

    repo, port = webserver
    shown: list[str] = []
    data = graphql(
        port,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } }"
        " ... on PythonError { message } } }",
    )
    [location] = data["repositoriesOrError"]["nodes"]
    # the instance setting the project's dagster.yaml carries: no newsletter dialog
    assert graphql(port, "{ shouldShowNux }")["shouldShowNux"] is False

    tab = chromium.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    # each group's lineage graph, the assets drawn as nodes
    address = f"{location['name']}@{location['location']['name']}"
    stages = read_stages(repo)
    for group in sorted({s.group for s in stages}):
        url = f"http://127.0.0.1:{port}/locations/{address}/asset-groups/{group}/lineage"
        tab.goto(url, timeout=60_000)
        for asset in [s.asset for s in stages if s.group == group]:
            expect(tab.get_by_text(asset, exact=True).first).to_be_visible(timeout=60_000)
            shown.append(asset)
        tab.screenshot(path=str(tmp_path / f"group_{group}.png"))
    # materialize raw_episodes through the API the UI's button calls
    launched = graphql(
        port,
        "mutation L($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p)"
        " { __typename ... on LaunchRunSuccess { run { runId } }"
        " ... on PythonError { message } } }",
        {
            "p": {
                "selector": {
                    "repositoryLocationName": location["location"]["name"],
                    "repositoryName": location["name"],
                    "pipelineName": "__ASSET_JOB",
                    "assetSelection": [{"path": ["raw_episodes"]}],
                },
                "mode": "default",
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline, status = time.monotonic() + 180, "QUEUED"
    while status not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
        run = graphql(
            port,
            "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
            {"id": run_id},
        )
        status = run["runOrError"]["status"]
    assert status == "SUCCESS"
    events = graphql(
        port,
        '{ assetNodeOrError(assetKey: {path: ["raw_episodes"]}) { ... on AssetNode {'
        " assetMaterializations(limit: 1) { runId metadataEntries { label"
        " ... on TextMetadataEntry { text } } } } } }",
    )["assetNodeOrError"]["assetMaterializations"]
    assert events[0]["runId"] == run_id
    entries = {e["label"]: e.get("text") for e in events[0]["metadataEntries"]}
    assert entries["dvc_status"] == "up to date, skipped"  # DVC: nothing to do
    tab.goto(f"http://127.0.0.1:{port}/runs/{run_id}", timeout=60_000)
    expect(tab.get_by_text("Success").first).to_be_visible(timeout=60_000)
    tab.screenshot(path=str(tmp_path / "run.png"))
    assert errors == []
    assert sorted(shown) == sorted(s.asset for s in read_stages(repo))  # every asset was drawn
    if os.environ.get("DREAMER4_SCREENSHOTS"):  # keep them to look at
        for path in tmp_path.glob("*.png"):
            shutil.copy(path, Path(os.environ["DREAMER4_SCREENSHOTS"]) / path.name)


def test_asset_pages_show_what_dvc_produced(webserver, chromium, tmp_path: Path):
    """After `dvc repro` (here: the session's trained repository, reproduced by DVC alone),
    `python -m orchestration.record` — what `make run` ends with — makes the asset pages show
    a materialization with its numbers and the report link, not "Never materialized"."""
    from playwright.sync_api import expect

    repo, port = webserver
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.record", str(repo)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world_model" in proc.stdout and "eval_report" in proc.stdout
    tab = chromium.new_page(viewport={"width": 1600, "height": 1000})
    for asset, shown in (("world_model", "rollout/psnr_k4"), ("eval_report", "report.html")):
        tab.goto(f"http://127.0.0.1:{port}/assets/{asset}", timeout=60_000)
        expect(tab.get_by_text(shown).first).to_be_visible(timeout=60_000)
        expect(tab.get_by_text("Never materialized")).to_have_count(0)
        tab.screenshot(path=str(tmp_path / f"asset_{asset}.png"))


def test_a_dvc_repro_by_hand_reaches_the_asset_page(webserver, chromium, tmp_path: Path):
    """A `dvc repro` by hand that changes one stage: the daemon (as `make dagster` runs it)
    ticks the `dvc_lock_sensor`, and the asset page shows the new materialization."""
    from playwright.sync_api import expect

    repo, port = webserver
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "DREAMER4_REPO": str(repo)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 (closed below)
    daemon = None
    try:
        recorded = subprocess.run(  # `make run` ends with it: every asset recorded once
            [sys.executable, "-m", "orchestration.record", str(repo)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        params = yaml.safe_load(original)
        params["orchestration"]["record_interval_s"] = 5  # the sensor's interval, for the test
        params["profiles"]["tiny"]["evaluate"]["clip_steps"] -= 2  # evaluate alone reruns
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        before = lock_hashes(repo)
        proc = subprocess.run(
            ["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        after = lock_hashes(repo)
        changed = {s for s in after if after[s] != before.get(s)}
        assert changed == {"evaluate"}, proc.stdout[-2000:]
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run",
             "-m", "orchestration.definitions"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        query = (
            '{ assetNodeOrError(assetKey: {path: ["eval_report"]}) { ... on AssetNode {'
            " assetMaterializations(limit: 1) { timestamp tags { key value } } } } }"
        )
        deadline, version = time.monotonic() + 300, None
        while version != after["evaluate"]:
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"not recorded: {(tmp_path / 'daemon.log').read_text()[-3000:]}")
            time.sleep(2)
            found = graphql(port, query)["assetNodeOrError"]["assetMaterializations"]
            tags = {t["key"]: t["value"] for t in found[0]["tags"]} if found else {}
            version = tags.get("dagster/data_version")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            counts = {
                s.asset: len(instance.fetch_materializations(dg.AssetKey(s.asset), 5).records)
                for s in read_stages(repo)
            }
        assert {a for a, n in counts.items() if n != 1} == {"eval_report"}  # the one it changed
        assert counts["eval_report"] == 2
        tab = chromium.new_page(viewport={"width": 1600, "height": 1000})
        tab.goto(f"http://127.0.0.1:{port}/assets/eval_report", timeout=60_000)
        expect(tab.get_by_text("report.html").first).to_be_visible(timeout=60_000)
        # "Latest materialization" links to the event the sensor recorded, not the first one
        latest = tab.locator(f'a[href*="view=events&time={found[0]["timestamp"]}"]')
        expect(latest.first).to_be_visible(timeout=60_000)
        tab.screenshot(path=str(tmp_path / "asset_eval_report_after_repro.png"))
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
        log.close()
        params_file.write_text(original)
        # back to the session's state (DVC's run cache restores the previous outputs)
        subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, timeout=600)
    assert dvc_cli.changed_stages(repo) == set()
