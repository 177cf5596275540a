"""What every conversion command shares: refusing an output that would replace its input or a non-empty one
before the slow read, notes on what was assumed, and the ending.

A command ends with one line: `wrote OUT<summary> in S s` on success, or `error: ...` on stderr with exit
status 1 and no traceback for anything a user can fix (a missing or corrupt file, a mismatched shape, an
existing output).
"""

import argparse
import sys
import time
from collections.abc import Callable, Iterable

from conversion.safetensors_io import CheckpointError
from slam_jax.files import refuse_overlap
from slam_jax.paths import Path

ERRORS = (CheckpointError, FileExistsError, FileNotFoundError, ValueError, OSError)


def refuse_non_empty(out: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before the slow read of the checkpoint, an `out` that the atomic write must not replace: one that
    is, lies inside or contains one of `inputs` (always, a `ValueError`), or a non-empty one unless `overwrite`
    (a `FileExistsError`)."""
    refuse_overlap(out, inputs)
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")


def note(message: str) -> None:
    """Tell the user, on stderr, what a command assumed for something its input does not say."""
    print(f"note: {message}", file=sys.stderr)


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


def run_model_converter(
    argv: list[str] | None,
    prog: str,
    description: str,
    model_help: str,
    out_noun: str,
    convert: Callable[..., Path],
    summary: Callable[[Path], str],
) -> int:
    """The `main` of a converter whose arguments are `--model`, `--out` and `--overwrite`: parse `argv` (default
    the command line), run `convert(model, out, overwrite=...)` and print its outcome; the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--out", required=True, help=f"output {out_noun} (must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return finish(lambda: convert(args.model, args.out, overwrite=args.overwrite), summary)
