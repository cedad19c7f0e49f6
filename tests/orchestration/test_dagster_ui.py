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

import pytest

from orchestration.dvc_graph import read_stages
from tests.conftest import REPO

INSTANCE = """telemetry:
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
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    repo, port = webserver
    shown: list[str] = []
    data = graphql(
        port,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } }"
        " ... on PythonError { message } } }",
    )
    [location] = data["repositoriesOrError"]["nodes"]

    tab = chromium.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    # each group's lineage graph, the assets drawn as nodes
    address = f"{location['name']}@{location['location']['name']}"
    stages = read_stages(repo)
    for n, group in enumerate(sorted({s.group for s in stages})):
        url = f"http://127.0.0.1:{port}/locations/{address}/asset-groups/{group}/lineage"
        tab.goto(url, timeout=60_000)
        if n == 0:  # a first visit asks about Dagster's newsletter in a dialog
            try:
                tab.get_by_role("button", name="Skip").click(timeout=15_000)
            except PlaywrightTimeout:
                pass  # not asked this time
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
