"""What every conversion command shares: refusing an output that would replace its input or a non-empty one
before the slow read, notes on what was assumed, and the ending.

A command ends with one line: `wrote OUT<summary> in S s` on success, or `error: ...` on stderr with exit
status 1 and no traceback for anything a user can fix (a missing or corrupt file, a mismatched shape, an
existing output, a missing bucket or a bucket's refusal: `slam_jax.paths.error_line`).

Every path may be a bucket URL (gs://, s3://): inputs that a library reads as local files come from
`paths.local_copy` (`local_source`), outputs are staged locally and uploaded index-last (`files.atomic_dir`).
"""

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from conversion.safetensors_io import CheckpointError
from slam_jax import paths
from slam_jax.files import refuse_overlap
from slam_jax.paths import Path

ERRORS = (CheckpointError, FileExistsError, FileNotFoundError, ValueError, OSError)


def refuse_non_empty(out: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before the slow read of the checkpoint, an `out` that the atomic write must not replace: one that
    is, lies inside or contains one of `inputs` (always, a `ValueError`), or a non-empty one unless `overwrite`
    (a `FileExistsError`)."""
    refuse_overlap(out, inputs)
    paths.check_bucket(out)
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")


def local_source(source: str | Path, noun: str = "checkpoint folder") -> Path:
    """The local folder or file to read `source` from: itself, or for a bucket URL its copy in the local cache
    (`paths.local_copy`: libraries such as torch and memory-mapped safetensors need local files)."""
    if not paths.is_remote(source):
        return Path(source)
    if not Path(source).exists():
        paths.check_bucket(source)
        raise CheckpointError(f"{source}: no such {noun}")
    return paths.local_copy(source)


@contextlib.contextmanager
def named_as(copy: Path, source: str | Path) -> Iterator[None]:
    """Errors raised in the block that name the local copy of a bucket object name `source` instead."""
    if copy == Path(source) or not paths.is_remote(source):
        yield
        return
    try:
        yield
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        message = str(error).replace(str(copy), str(source).rstrip("/"))
        kind = next(kind for kind in (CheckpointError, FileNotFoundError, ValueError) if isinstance(error, kind))
        raise kind(message) from None


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
    except Exception as error:
        line = str(error) if isinstance(error, ERRORS) else paths.error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
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
