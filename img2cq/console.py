"""What a command says on the console: one ``error: ...`` line for bad input, and the library's notes.

Every front door (the training and evaluation scripts, ``scripts/``, ``python -m metrics...``,
``python -m img2cq...``) reports bad input the same way: ``fail(message)`` writes one line,
``error: message``, on stderr and gives the exit status (2 unless told otherwise). Library code
never prints: it logs (``logging.getLogger(__name__)``), and a command that wants those notes shown
calls ``show_notes()``. Imports nothing heavy, so a front door may import it before parsing.
"""

from __future__ import annotations

import logging
import sys

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
