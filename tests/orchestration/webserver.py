"""`python -m tests.orchestration.webserver PORT_FILE MODULE WORKDIR`: the Dagster UI
(dagster-webserver's own app, instance from $DAGSTER_HOME, code location `MODULE`) served on
127.0.0.1 on a socket this process binds to port 0; the port it got is written to PORT_FILE.

Why not `dagster-webserver -p …`: its CLI treats port 0 as "the default port", so a test would
have to pick a free port and hope nobody takes it before the server binds it. The workspace
loading it needs is private Dagster API (`dagster._cli`, `dagster._core`), fine at the pinned
version; an upgrade that moves it fails here with an ImportError, not silently.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

import uvicorn
from dagster import DagsterInstance
from dagster._cli.workspace.cli_target import WorkspaceOpts, workspace_opts_to_load_target
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster_webserver.app import create_app_from_workspace_process_context
from dagster_webserver.version import __version__


def main(port_file: Path, module: str, workdir: str) -> None:
    target = workspace_opts_to_load_target(
        WorkspaceOpts(module_name=(module,), working_directory=workdir)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with (
        contextlib.closing(sock),
        DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, target, version=__version__) as context,
    ):
        app = create_app_from_workspace_process_context(context)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        aside = port_file.with_name(port_file.name + ".tmp")
        aside.write_text(str(sock.getsockname()[1]))
        aside.rename(port_file)  # the reader never sees a half-written port
        server.run(sockets=[sock])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
