"""The command line's one error type."""

from __future__ import annotations


class CliError(Exception):
    """A command cannot do what was asked. ``hearth``'s ``main`` prints
    ``hearth: error: MESSAGE`` on stderr and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
