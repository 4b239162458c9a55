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
