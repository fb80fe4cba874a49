"""The daemon's process-level signals: a stop while it is still starting, and stacks on demand.

`watcher run` spends seconds importing and opening its state before `Daemon.run` hands
SIGTERM and SIGINT to the event loop, and on a starved machine (a node busy with training
jobs) that window reaches a minute. A supervisor that stops the daemon then (a rolling
update, a replica scaled down) used to kill it by the signal, with nothing in the log to
say why. Nothing is claimed, mailed, leased or bound before the loop starts, so exiting at
once is safe: the process says so on stderr and exits 0, like a stop after starting.

`kill -USR1 PID` prints the stack of every thread to stderr at any time without stopping
the daemon (`faulthandler`), for one that seems stuck; a fatal signal (a crash in a C
extension) leaves the same stacks.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_while_starting(signum: int, _frame: FrameType | None) -> None:
    # Exiting takes a moment (threads, finalizers); a supervisor or a user that signals
    # again meanwhile must not turn a clean exit into a kill by the signal.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    name = signal.Signals(signum).name
    print(
        f"{name} while watcher was starting: exiting before anything was claimed, mailed or bound",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(0)


def enable_stack_dumps() -> None:
    """Stacks of every thread on a fatal signal and on SIGUSR1. Needs a real file
    descriptor: a stderr held in memory (a test's CLI runner) has none, and then this
    does nothing."""
    with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
        faulthandler.enable()
        faulthandler.register(signal.SIGUSR1, all_threads=True)


@contextlib.contextmanager
def exit_on_stop_while_starting() -> Iterator[None]:
    """SIGTERM or SIGINT exit at once with code 0 until the event loop takes them over
    (`Daemon.run` does first thing); the handlers found are put back on leaving, so an
    in-process caller (a test's CLI runner) keeps its own; after a stop they stay
    ignored, so that a second one cannot turn the exit into a kill. Outside the main
    thread, where Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _stop_while_starting) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        if not _exiting():
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _exiting() -> bool:
    """`_stop_while_starting` ran: the process is on its way out, and the stop signals
    stay ignored until it is gone."""
    return all(signal.getsignal(sig) is signal.SIG_IGN for sig in STOP_SIGNALS)
