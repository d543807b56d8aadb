"""The one exception type for problems a user can fix (bad study file, bad data, unknown model).

The CLI catches it once and prints its message as a single line with a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SweeperError(Exception):
    """A user-facing error: the message names the file, key or value and what to do."""


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean a, b?)' for the closest options, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
