"""Worker pools end cleanly even in a process that inherited SIGTERM ignored."""

from __future__ import annotations

import subprocess
import sys

from dreamer4.parallel import imap_workers

SCRIPT = """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as inherited from some parents
from dreamer4.parallel import imap_workers
print(list(imap_workers(abs, [1, -2, 3, -4], 2)))
"""


def test_results_in_order_in_and_out_of_process():
    assert list(imap_workers(abs, [3, -1, -2], 1)) == [3, 1, 2]
    assert list(imap_workers(abs, [3, -1, -2, 5, -7], 2)) == [3, 1, 2, 5, 7]


def test_pool_ends_when_sigterm_is_ignored():
    # Pool.terminate() (what `with Pool()` does on exit) never ends such workers: a hang.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 2, 3, 4]"
