"""What every conversion command shares: refusing a non-empty output before the slow read, and the ending.

A command ends with one line: `wrote OUT<summary> in S s` on success, or `error: ...` on stderr with exit
status 1 and no traceback for anything a user can fix (a missing or corrupt file, a mismatched shape, an
existing output).
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path

from conversion.safetensors_io import CheckpointError

ERRORS = (CheckpointError, FileExistsError, FileNotFoundError, ValueError, OSError)


def refuse_non_empty(out: str | Path, overwrite: bool) -> None:
    """Raise `FileExistsError` for a non-empty `out` unless `overwrite`: the atomic write would refuse it anyway,
    but only after the slow read of the checkpoint."""
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")


def finish(convert: Callable[[], Path], summary: Callable[[Path], str], timed: bool = True) -> int:
    """Run `convert` and print its outcome in one line; the exit status (0, or 1 after an error).

    `summary(out)` describes what was written (it follows `wrote OUT`); `timed` appends the seconds taken.
    """
    start = time.perf_counter()
    try:
        out = convert()
    except ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    description = summary(out)
    elapsed = f" in {time.perf_counter() - start:.1f} s" if timed else ""
    print(f"wrote {out}{description}{elapsed}")
    return 0
