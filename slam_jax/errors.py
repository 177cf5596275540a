"""The errors a user can cause, each reported by `python -m slam_jax.main` as one `error:` line.

Every subpackage raises these (or `ValueError` / `FileNotFoundError` / `FileExistsError`) for bad input and
settings, with a message that names the file and line, or the config key, and what to do.
"""


class DataError(ValueError):
    """Bad input data; the message names the file and line (or row)."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a NaN loss); the message says what happened and what was kept."""


class BucketError(OSError):
    """A bucket (gs://, s3://) failed an operation; the message names the object and what failed, in one line."""


USER_ERRORS = (DataError, TrainingError, BucketError, ValueError, FileNotFoundError, FileExistsError)


def exception_chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception behind it, nearest first: causes, the contexts Python would show, and the
    members of exception groups (asyncio task groups, Orbax's background threads)."""
    chain, queue, seen = [], [error], set()
    while queue:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        members = current.exceptions if isinstance(current, BaseExceptionGroup) else ()
        context = None if current.__suppress_context__ else current.__context__
        queue += [*members, current.__cause__, context]
    return chain
