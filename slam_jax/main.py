"""The slam_jax command: `python -m slam_jax.main --config configs/NAME.py [--config.KEY=VALUE] [--workdir DIR]`.

The config's `mode` picks the job. This module is the one place that turns failures into exit codes:
- a failure the user can cause (bad data, settings or config file; a missing, read-only or full disk) is one
  `error:` line on stderr naming the file, line or key, exit code 1; a bad command line, 2;
- a training run that SIGTERM or Ctrl-C stopped saves its checkpoint and exits 75 (EX_TEMPFAIL: re-run the same
  command to resume); a Ctrl-C outside the training loop exits 130;
- a job on several hosts that lost a process exits 69 with one line naming it (`parallel.HostWatchdog`, or
  `supervise` when JAX's coordination client aborts this process because process 0 is gone);
- `--debug` (or `SLAM_JAX_DEBUG=1`) shows the full traceback instead of the line. A bug keeps its traceback.
"""

import ctypes
import errno
import os
import re
import runpy
import signal
import subprocess
import sys
import sysconfig
import threading
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from slam_jax import errors, modes, parallel, paths, progress
from slam_jax.errors import USER_ERRORS, BucketError
from slam_jax.paths import Path

EXIT_ERROR = 1  # a failure the user can cause
EXIT_USAGE = 2  # a bad command line
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; the same command resumes
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C outside the training loop
EXIT_HOST_LOST = parallel.EXIT_HOST_LOST  # 69: a job on several hosts lost a process; re-run on every host
DEBUG_VARIABLE = "SLAM_JAX_DEBUG"
SUPERVISED_VARIABLE = "SLAM_JAX_SUPERVISED"
READ_ONLY_MODES = ("status",)  # jobs that only read their --workdir: it is not created for them

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: workdir/<config file name>).")
_DEBUG = flags.DEFINE_bool("debug", False, f"Full tracebacks instead of one error line (or {DEBUG_VARIABLE}=1).")
flags.mark_flags_as_required(["config"])

# TensorStore (Orbax's array writes) reports an operating-system failure as text: `... "/path": ... No space left
# on device [os_error_code='28']`.
_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_HINTS = {
    errno.ENOSPC: "free some space and re-run the same command (it resumes from the last checkpoint)",
    errno.EDQUOT: "free some space and re-run the same command (it resumes from the last checkpoint)",
    errno.EACCES: "make it writable or pass another --workdir",
    errno.EROFS: "make it writable or pass another --workdir",
    errno.EPERM: "make it writable or pass another --workdir",
}


def main(argv: list[str]) -> int:
    del argv
    debug = _DEBUG.value or debug_requested([])
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO
    if not debug:
        logging.get_absl_handler().addFilter(without_traceback)
    config = _CONFIG.value
    if config.mode not in modes.MODES:
        print(f"error: --config.mode={config.mode!r} is not one of {sorted(modes.MODES)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        workdir = Path(_WORKDIR.value or Path("workdir") / Path(flags.FLAGS["config"].config_filename).stem)
        paths.check_bucket(workdir)  # before anything is written: gcsfs would even create a missing bucket
        with paths.naming(workdir):
            is_file = workdir.exists() and not workdir.is_dir()
    except (ValueError, FileNotFoundError, BucketError) as error:
        print(f"error: --workdir {error}", file=sys.stderr)
        return EXIT_USAGE
    if is_file:
        print(f"error: --workdir {workdir}: is a file, not a folder", file=sys.stderr)
        return EXIT_USAGE
    code = run_job(config, workdir, debug)
    if code and not debug:
        # The line said what went wrong: its echoes in other threads and at exit (a log writer that cannot flush
        # to the full disk, say) would only bury it.
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda unraisable: None
    return code


def run_job(config, workdir: Path, debug: bool = False) -> int:
    """Run the job of `config.mode` in `workdir` and return the exit code.

    A failure the user can cause is printed as one `error:` line (raised with its traceback when `debug`); a run
    stopped by a signal after saving gets one line too and `EXIT_PREEMPTED`."""
    try:
        if config.mode not in READ_ONLY_MODES:
            workdir.mkdir(parents=True, exist_ok=True)
        result = modes.job(config.mode)(config, workdir)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (Ctrl-C); finished outputs are kept; the same command resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        line = error_line(error, workdir)
        if debug or line is None:
            raise
        print(f"{progress.process_prefix()}error: {line}", file=sys.stderr, flush=True)
        if isinstance(error, BucketError) or paths.error_line(error) is not None:
            # A bucket that stopped answering: background writers (Orbax, TensorStore) would retry for minutes
            # before Python could exit. What was committed is kept; what was not is never taken for committed.
            sys.stdout.flush()
            os._exit(EXIT_ERROR)
        return EXIT_ERROR
    stopped = stopped_by_signal(config.mode, result)
    if stopped:
        print(f"error: {stopped}; re-run the same command to resume", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    return 0


def debug_requested(argv: list[str]) -> bool:
    """Whether to show full tracebacks: `--debug` among `argv` or SLAM_JAX_DEBUG set (to anything but 0)."""
    return "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def without_traceback(record) -> bool:
    """A log filter that keeps a library's error message but drops its traceback (shown with --debug)."""
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def one_line(text: str) -> str:
    """`text` with its lines joined by '; '."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def os_failure(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, path or None) when `error` itself is an operating-system failure: an OSError with an errno (not the
    FileNotFoundError of a message of ours), or TensorStore's text for one."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno, None if error.filename is None else str(error.filename)
    code = _OS_ERROR_CODE.search(str(error))
    if code is None:
        return None
    paths = _QUOTED_PATH.findall(str(error))
    return int(code.group(1)), paths[-1] if paths else None


def error_line(error: BaseException, workdir: Path) -> str | None:
    """The one line for a failure the user can cause, or None for a bug (which keeps its traceback).

    An operating-system failure found anywhere behind `error` (a full disk under Orbax's threads, a read-only
    folder) is named by its path (the workdir when the system gave none) and its errno."""
    if isinstance(error, USER_ERRORS) and os_failure(error) is None:
        return one_line(str(error))
    bucket = paths.error_line(error)
    if bucket is not None:  # the library's text rarely names the object: name the workdir the job writes to
        return f"{workdir}: {bucket}"
    failures = [failure for failure in map(os_failure, errors.exception_chain(error)) if failure is not None]
    if not failures:
        return None
    code = failures[0][0]
    path = next((path for number, path in failures if number == code and path), None) or workdir
    hint = f"; {_HINTS[code]}" if code in _HINTS else ""
    return f"{path}: {os.strerror(code)} [{errno.errorcode.get(code, code)}]{hint}"


def stopped_by_signal(mode: str, result) -> str | None:
    """What a signal stopped, read from a job's result: a training run (`stop_reason` 'preempted') or, for
    `mode: pipeline` (whose result is {stage: its result}), the stage it stopped; None if none was."""
    runs = result if mode == "pipeline" else {mode: result}
    for name, run in (runs if isinstance(runs, dict) else {}).items():
        if isinstance(run, dict) and run.get("stop_reason") == "preempted":
            what = f"stage {name!r}" if mode == "pipeline" else name
            return f"{what} was stopped by a signal at step {run.get('step')} and saved its checkpoint"
    return None


def config_keys(config, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict."""
    keys = []
    for name, value in config.items():
        keys += config_keys(value, f"{prefix}{name}.") if hasattr(value, "items") else [f"{prefix}{name}"]
    return keys


def fail(line: str, code: int) -> None:
    """Exit with `code` after printing `error: line`."""
    print(f"error: {line}", file=sys.stderr)
    sys.exit(code)


def failing_line(error: BaseException, config_path: str) -> str:
    """`file:line` where loading a config failed: a syntax error's own, else the innermost frame in the user's
    files (the config, or a config it imports), not in Python or an installed package."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    installed = {sysconfig.get_paths()[name] for name in ("stdlib", "purelib", "platlib")}
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<")
        and frame.filename != __file__
        and not any(frame.filename.startswith(folder) for folder in installed)
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else config_path


def load_config(config_path: str):
    """`get_config()` of a config file; one that does not run is a one-line error naming the failing line."""
    sys.path.insert(0, str(Path.cwd()))
    try:
        namespace = runpy.run_path(config_path)
        if "get_config" not in namespace:
            fail(f"{config_path}: defines no get_config()", EXIT_ERROR)
        return namespace["get_config"]()
    except Exception as error:
        if debug_requested(sys.argv):
            raise
        detail = error.msg if isinstance(error, SyntaxError) else one_line(str(error))
        fail(f"{failing_line(error, config_path)}: {type(error).__name__}: {detail}", EXIT_ERROR)


def check_command_line(argv: list[str]) -> None:
    """Before absl (whose failures here are long tracebacks): exit with one `error:` line if `--config` names no
    file (2), the file does not load (1), or a `--config.KEY=VALUE` override names no key (2, listing the keys)."""
    config_path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    if config_path is None and "--config" in argv[:-1]:
        config_path = argv[argv.index("--config") + 1]
    if config_path is None:
        return  # absl reports the missing flag
    if not Path(config_path).is_file():
        if Path(config_path.rsplit(":", 1)[0]).is_file():
            return  # `FILE:ARGUMENT`, an argument for get_config
        fail(f"--config {config_path}: no such file", EXIT_USAGE)
    keys = config_keys(load_config(config_path))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in keys:
                fail(f"unknown config key {key!r} in {config_path}; valid keys: {', '.join(keys)}", EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or value as one `error:` line (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(one_line(str(error)), EXIT_USAGE)


def supervise(argv: list[str], environ=os.environ) -> int | None:
    """On several hosts, run this same command in a child process and return its exit code (None: run the job
    here: one host, or this is the child).

    JAX's coordination client aborts a process from C++ (a stack trace, exit 134) when the coordination service,
    which lives in process 0, goes away; no Python code of the job runs then. The parent passes the child's stderr
    through, forwards SIGTERM and SIGINT to it (the child has its own process group, so a terminal's Ctrl-C reaches
    it once), dies with it (the child is killed if the parent is), and turns such an abort into one line naming the
    lost process and the last committed checkpoint, and exit code 69."""
    if environ.get(SUPERVISED_VARIABLE) or not parallel.wants_distributed(environ):
        return None
    child = subprocess.Popen(
        [sys.executable, "-m", "slam_jax.main", *argv[1:]],
        env={**environ, SUPERVISED_VARIABLE: "1", progress.TTY_VARIABLE: str(int(sys.stderr.isatty()))},
        stderr=subprocess.PIPE,
        process_group=0,
        preexec_fn=_die_with_parent,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: child.send_signal(received))
    tail = _pass_through(child.stderr.fileno())
    code = child.wait()
    if code >= 0:
        return code
    lost = lost_process(tail)
    if lost is None:
        return 128 - code
    print(
        f"\nerror: lost process {lost} (JAX's coordination service reported it: {signal.Signals(-code).name} from "
        f"its client); {last_committed(argv)}; re-run the same command on every host to resume",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_HOST_LOST


def _die_with_parent() -> None:
    """In the child (Linux): SIGKILL when the parent dies, so that killing a host's process kills its job."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pass_through(fd: int, keep: int = 16_384) -> str:
    """Copy `fd` to this process's stderr until it closes; returns its last `keep` bytes as text."""
    tail = b""
    while chunk := os.read(fd, 65_536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-keep:]
    return tail.decode(errors="replace")


def lost_process(stderr_tail: str) -> int | None:
    """Which process the coordination client's abort says was lost: a task its heartbeat missed, or process 0 when
    the service itself went away; None when the tail shows no coordination failure."""
    if "coordination" not in stderr_tail.lower():
        return None
    missed = re.findall(r"Task (\d+) heartbeat timeout", stderr_tail)
    return int(missed[-1]) if missed else 0


def last_committed(argv: list[str]) -> str:
    """The last committed checkpoint of the command's workdir (`--workdir`, or its default from `--config`)."""
    from slam_jax.training import checkpoints

    workdir = _flag_value(argv, "--workdir")
    if workdir is None:
        config = _flag_value(argv, "--config") or "config"
        workdir = str(Path("workdir") / Path(config.split(":", 1)[0]).stem)
    return checkpoints.last_committed(Path(workdir) / "checkpoints")


def _flag_value(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
    return None


if __name__ == "__main__":
    check_command_line(sys.argv)
    supervised = supervise(sys.argv)
    if supervised is not None:
        sys.exit(supervised)
    app.run(main, flags_parser=parse_flags)
