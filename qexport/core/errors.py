"""The one exception type users see.

Every failure a user can cause (bad path, unknown model, corrupt file) is raised as a
:class:`QExportError` whose message is a single sentence saying what is wrong and how to fix
it; the CLI prints that sentence and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QExportError(Exception):
    """A user-facing failure; ``str(err)`` is the whole message."""

    exit_code = 2


class RuntimeMissing(QExportError):
    """The runtime an artifact needs is not installed here: a skip, not a failure."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close.

    We suggest, never auto-correct: silently running another model is worse than failing.
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(text: str, limit: int = 200, default: str = "") -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (``default`` when empty):
    the part of a library's multi-line message that fits in a one-sentence error."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else default


def last_line(text: str, limit: int = 200, default: str = "") -> str:
    """The last non-empty line of ``text`` (a child's stderr ends with the exception that killed it)."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip()[:limit] if lines else default


def describe_exception(err: BaseException, limit: int = 200) -> str:
    """'TypeName: first line of the message' (or just the type): an unexpected error in one line."""
    detail = first_line(str(err), limit)
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def user_message(err: BaseException) -> str:
    """What a user reads about ``err``: a QExportError's own sentence, else its type and first line."""
    return str(err) if isinstance(err, QExportError) else describe_exception(err)
