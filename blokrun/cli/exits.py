"""The exit codes of the ``blokrun`` command."""

from __future__ import annotations

__all__ = [
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SUSPENDED",
    "EXIT_USAGE",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Another process holds the run's lease (``RunBusy``) or took it over (``LeaseLost``): the
#: run is not failed, it is someone else's. EX_TEMPFAIL: try again later.
EXIT_BUSY = 75
