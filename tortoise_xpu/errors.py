"""Exceptions that the CLI turns into one-line messages and exit codes.

``UserError`` (exit 2) is bad input: a missing file, an unknown voice, a text
that cannot be spoken.  ``TortoiseError`` (exit 1) is a runtime failure the user
can act on (out of memory at batch 1, a device error).  Anything else is a bug.
"""

from __future__ import annotations


class TortoiseError(Exception):
    """A failure with a message fit for the user; exit code 1."""

    exit_code = 1


class UserError(TortoiseError, ValueError):
    """Bad input from the user (text, files, options); exit code 2."""

    exit_code = 2


class ModelFileError(UserError):
    """A checkpoint or asset that is missing, corrupt or of the wrong model."""


class AudioError(UserError):
    """An audio file that cannot be used as a voice clip."""


class Cancelled(TortoiseError):
    """The caller cancelled a run (``RunContext.check_cancelled``); nothing of it is returned."""


class OutOfMemory(TortoiseError):
    """The device ran out of memory even at the smallest batch."""
