"""The project's one base exception for expected failures.

An expected failure is one the user can fix: bad input (an option, a list file, a damaged
video), missing weights, a cache or run that does not match what was asked. Every such
error derives from :class:`AvarError` and carries a message that names the file and the
fix; the CLI prints it as one line and exits 2. Anything else that escapes is a bug and
keeps its traceback (exit 1).

It lives in ``cache_schema`` because that is the one package every stage imports.
"""

from __future__ import annotations


class AvarError(Exception):
    """An expected failure: the message says what is wrong and how to fix it."""


class InvalidInput(AvarError, ValueError):
    """An option, argument or input file's content is not usable as given."""


class MissingInput(AvarError, FileNotFoundError):
    """A file or folder the command needs is not there (or is not what it should be)."""


__all__ = ["AvarError", "InvalidInput", "MissingInput"]
