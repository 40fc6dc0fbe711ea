"""``python -m dcsched.runs.tee LOG -- ARGV...``: run a Ray Job's driver (ARGV) with its
output going both to our stdout and to the end of LOG.

Ray's job log is the entrypoint's stdout, which the Ray dashboard shows; reading it back
means loading the whole log (Ray's API has no byte range). So every Ray Job's entrypoint
is this tee (``dcsched.adapters.ray_executor``): Ray's log keeps everything, and LOG, the
run's ``logs/driver-<run id>.log`` that the server created private beforehand, has the
same bytes for ``dcsched logs`` to read by byte range.

The driver runs as our child (``RankProcess``: its own process group, unbuffered Python
output, killed if we die), copied line by line. SIGTERM, SIGINT and SIGHUP are passed on
to it, and we exit with its status (128 + N when signal N killed it), so a cancel reaches
the user's command exactly as it did without the tee. A signal may reach the driver twice
(Ray's stop signals the entrypoint and its children); the drivers treat a repeat as one.

When our parent is gone (a node lost with its Ray worker, which started us), we stop the
driver as a cancel would (SIGTERM to its group, SIGKILL after the grace) and exit: the
driver's own parent is the tee, so without this check a driver that watches its parent
(a serving replica) would outlive its node.

Standard library only: it starts before every Ray Job's driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from dcsched.runs.process import RankProcess

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

PARENT_CHECK_S = 1.0
"""How often the tee checks that the process that started it is still there."""


def exit_status(code: int) -> int:
    """A child's status as our exit status: the same code, or 128 + N when signal N
    killed it (what a shell reports)."""
    return 128 - code if code < 0 else code


def stop_when_orphaned(driver: RankProcess, parent: int, check_s: float = PARENT_CHECK_S) -> None:
    """Until the driver ends: once our parent is no longer ``parent``, stop the driver."""
    while driver.process.poll() is None:
        time.sleep(check_s)
        if os.getppid() != parent:
            driver.stop()
            return


def run_teed(command: list[str], log: Path) -> int:
    """Run ``command`` with its output copied to our stdout and appended to ``log``;
    forward the stop signals to it; stop it if our parent goes; its exit status (see
    ``exit_status``)."""
    parent = os.getppid()
    driver: RankProcess | None = None
    early: list[int] = []  # signals that came before the driver started

    def forward(signum: int, _frame: FrameType | None) -> None:
        if driver is None:
            early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver.process.pid, signum)

    for stop_signal in FORWARDED_SIGNALS:
        signal.signal(stop_signal, forward)
    driver = RankProcess(command, {}, log, echo=True)
    for signum in early:
        forward(signum, None)
    threading.Thread(target=stop_when_orphaned, args=(driver, parent), daemon=True).start()
    return exit_status(driver.wait())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m dcsched.runs.tee LOG -- COMMAND...", file=sys.stderr)
        return 2
    return run_teed(args[2:], Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
