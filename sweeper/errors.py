"""The one exception type for problems a user can fix (bad study file, bad data, unknown model).

The CLI catches it once and prints its message as a single line with a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class SweeperError(Exception):
    """A user-facing error: the message names the file, key or value and what to do."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a command, which says what it left and how to go on (exit code 130)."""


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean a, b?)' for the closest options, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def no_space(e: BaseException) -> bool:
    """A full disk (or quota), wherever it surfaced: an OSError's errno along the exception's chain, or
    the message a store wrapped it in (an MLflow server answers with the server's error text)."""
    return any(
        (isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT))
        or "No space left on device" in str(x)
        or "Disk quota exceeded" in str(x)
        for x in _chain(e)
    )


def disk_full_line(e: BaseException) -> str:
    """The one line a full disk becomes: where, and what to do."""
    where = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None)
    at = f" writing {where}" if where else ""
    return (
        f"no space left on the device{at}; free space there (the MLflow artifact store, the study "
        "storage, SWEEPER_CHECKPOINTS or the temp folder), then re-run the command: it resumes"
    )


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out
