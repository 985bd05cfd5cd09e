"""What a command says on the console: one ``error: ...`` line for bad input, and the library's notes;
and how a long job hears Ctrl-C (``StopRequest``).

Every front door (the training and evaluation scripts, ``scripts/``, ``python -m metrics...``,
``python -m img2cq...``) reports bad input the same way: ``fail(message)`` writes one line,
``error: message``, on stderr and gives the exit status (2 unless told otherwise). Library code
never prints: it logs (``logging.getLogger(__name__)``), and a command that wants those notes shown
calls ``show_notes()``. Imports nothing heavy, so a front door may import it before parsing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

BAD_INPUT = 2  # exit status of a command given bad input (a bad flag, a missing or unreadable file)

_NOTES_HANDLER_NAME = "img2cq-console"


def fail(message: object, code: int = BAD_INPUT) -> int:
    """Write ``error: message`` on stderr (one line) and return ``code``, the command's exit status."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def show_notes(level: int = logging.INFO) -> None:
    """Show the library's log records (loggers under ``img2cq``) of ``level`` and above on stderr,
    as bare lines. Calling it again changes nothing."""
    package = logging.getLogger("img2cq")
    if not any(h.get_name() == _NOTES_HANDLER_NAME for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_NOTES_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    package.setLevel(level)


class StopRequest:
    """Within ``with StopRequest(what):``, Ctrl-C or SIGTERM asks a long job to stop cleanly: the
    first one sets ``requested`` (the job checks it at a safe point, e.g. after a training step) and
    says ``what`` happens; a second one stops at once (KeyboardInterrupt). Signals can only be caught
    in the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, what: str):
        self.what = what
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}
        return self

    def _request(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: {self.what} (Ctrl-C again: stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
