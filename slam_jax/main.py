"""The slam_jax command: `python -m slam_jax.main --config configs/NAME.py [--config.KEY=VALUE] [--workdir DIR]`.

The config's `mode` picks the job.
"""

import runpy
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from slam_jax import modes
from slam_jax.errors import USER_ERRORS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: workdir/<config file name>).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO
    config = _CONFIG.value
    if config.mode not in modes.MODES:
        print(f"error: --config.mode={config.mode!r} is not one of {sorted(modes.MODES)}", file=sys.stderr)
        return 2
    workdir = Path(_WORKDIR.value or Path("workdir") / Path(flags.FLAGS["config"].config_filename).stem)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        modes.job(config.mode)(config, workdir)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def config_keys(config, prefix: str = "") -> list[str]:
    """Every dotted key of a ConfigDict."""
    keys = []
    for name, value in config.items():
        keys += config_keys(value, f"{prefix}{name}.") if hasattr(value, "items") else [f"{prefix}{name}"]
    return keys


def check_overrides(argv: list[str]) -> None:
    """Exit with a one-line error listing the valid keys if a --config.KEY override names no key."""
    config_path = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    if config_path is None and "--config" in argv[:-1]:
        config_path = argv[argv.index("--config") + 1]
    if config_path is None or not Path(config_path).is_file():
        return
    sys.path.insert(0, str(Path.cwd()))
    keys = config_keys(runpy.run_path(config_path)["get_config"]())
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in keys:
                print(
                    f"error: unknown config key {key!r} in {config_path}; valid keys: {', '.join(keys)}",
                    file=sys.stderr,
                )
                sys.exit(2)


if __name__ == "__main__":
    check_overrides(sys.argv)
    app.run(main)
