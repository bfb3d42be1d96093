"""The one exception type that reaches users.

Library code raises :class:`VostrackError` for anything a user can fix (bad paths, bad masks,
refused overwrites); the CLI turns it into one line on stderr and a non-zero exit code.
"""


class VostrackError(Exception):
    """A problem with the user's input or environment, described in one line."""

    exit_code = 2


class InterruptedRun(VostrackError):
    """The run was stopped (Ctrl-C); what was written can be resumed."""

    exit_code = 130


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
