"""The progress of a long job on stderr: a tqdm bar on a terminal, one plain line per period in a log file.

The mode is `bar` (tqdm, redrawn in place with carriage returns), `plain` (one line per period, no carriage
return, under `MAX_LINE` characters) or `auto` (bar when stderr is a terminal, else plain). A training job takes it
from `log.progress`; every job takes `SLAM_JAX_PROGRESS=auto|bar|plain` from the environment, which also decides
when `log.progress` is `auto`. On several hosts `python -m slam_jax.main` runs the job in a child whose stderr is a
pipe to the parent: the parent tells the child whether its own stderr is a terminal (`SLAM_JAX_STDERR_IS_TTY`).
"""

import os
import sys
import time

from tqdm import tqdm

MODES = ("auto", "bar", "plain")
MODE_VARIABLE = "SLAM_JAX_PROGRESS"
TTY_VARIABLE = "SLAM_JAX_STDERR_IS_TTY"
MAX_LINE = 299
PLAIN_SECONDS = 30.0


def choose_mode(setting: str = "auto", environ=os.environ, stream=None) -> str:
    """'bar' or 'plain': `setting` unless it is 'auto', else `SLAM_JAX_PROGRESS` unless that is unset or 'auto',
    else whether stderr (the parent's, when it said) is a terminal."""
    if setting not in MODES:
        raise ValueError(f"progress mode {setting!r}: expected one of {', '.join(MODES)}")
    if setting != "auto":
        return setting
    chosen = environ.get(MODE_VARIABLE, "").strip().lower() or "auto"
    if chosen not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={environ[MODE_VARIABLE]!r}: expected one of {', '.join(MODES)}")
    if chosen != "auto":
        return chosen
    told = environ.get(TTY_VARIABLE)
    if told in ("0", "1"):
        return "bar" if told == "1" else "plain"
    stream = sys.stderr if stream is None else stream
    return "bar" if _is_terminal(stream) else "plain"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def duration(seconds: float) -> str:
    """`H:MM:SS` (whole seconds)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plural(unit: str) -> str:
    """`file` -> `files`, `batch` -> `batches`: the counted things of a plain line."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def plain_line(
    desc: str, label: str, done: int, total: int | None, figures: dict[str, str], elapsed: float, rate: float
) -> str:
    """One progress line: `[desc] label done/total (pct%) figures elapsed H:MM:SS eta H:MM:SS`; no total (0 or None)
    means no percentage and no ETA, no rate (0) no ETA. Carriage returns and newlines become spaces, and a line
    longer than `MAX_LINE` is cut."""
    parts = [f"[{desc}] {label} {done:,}"]
    if total:
        parts[0] += f"/{total:,} ({100 * done / total:.1f}%)"
    parts += [f"{name} {value}" for name, value in figures.items()]
    parts.append(f"elapsed {duration(elapsed)}")
    if total and rate > 0:
        parts.append(f"eta {duration(max(total - done, 0) / rate)}")
    line = " ".join(parts).replace("\r", " ").replace("\n", " ")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def process_prefix() -> str:
    """`[process N] ` for a process other than 0 of a multi-host job (`jax.distributed`), else ''."""
    import jax  # here: the TTS's worker processes import this module without needing JAX

    if not jax.distributed.is_initialized() or jax.process_index() == 0:
        return ""
    return f"[process {jax.process_index()}] "


class Progress:
    """A job's progress, `n` out of `total` (None: unknown, may be set later): a tqdm bar, or plain lines on stderr
    at `emit()`, and every `every_seconds` of `update()`s when that is set, and at `close()` when the count moved
    since the last line. Shown only when `enabled`. A context manager, like tqdm."""

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "it",
        label: str | None = None,
        initial: int = 0,
        enabled: bool = True,
        mode: str = "auto",
        every_seconds: float | None = PLAIN_SECONDS,
    ):
        self.desc, self.label, self.initial = desc, label or plural(unit), initial
        self.enabled = enabled
        self.mode = choose_mode(mode) if enabled else "plain"
        self.every_seconds = every_seconds
        self.figures: dict[str, str] = {}
        self.n, self._total = initial, total or None
        self.start = self._last_line = time.perf_counter()
        self._line_n: int | None = None
        self.bar = None
        if enabled and self.mode == "bar":
            self.bar = tqdm(total=self._total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value or None
        if self.bar is not None:
            self.bar.total = self._total
            self.bar.refresh()

    def update(self, n: int = 1, **figures: str) -> None:
        """Count `n` more done; `figures` (name -> shown value) replace the previous ones."""
        self.n += n
        if figures:
            self.figures = figures
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(figures, refresh=False)
            self.bar.update(n)
        elif self.every_seconds is not None and time.perf_counter() - self._last_line >= self.every_seconds:
            self.emit()

    def line(self, figures: dict[str, str] | None = None) -> str:
        """The plain line of now, with `figures` (default: the last update's)."""
        elapsed = time.perf_counter() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        return plain_line(
            self.desc, self.label, self.n, self._total, self.figures if figures is None else figures, elapsed, rate
        )

    def emit(self, figures: dict[str, str] | None = None) -> None:
        """Write the plain line now (plain mode, when enabled; the bar shows itself)."""
        if not self.enabled or self.bar is not None:
            return
        print(self.line(figures), file=sys.stderr, flush=True)
        self._last_line, self._line_n = time.perf_counter(), self.n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.every_seconds is not None and self._line_n != self.n:
            self.emit()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def track(items, desc: str, *, unit: str = "it", enabled: bool = True):
    """The items of the sized `items`, counted on a `Progress` (like iterating over a tqdm bar)."""
    with Progress(desc, len(items), unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()


def write(message: str, file=None) -> None:
    """A line that does not break a bar being drawn (tqdm.write)."""
    tqdm.write(message, file=file)
