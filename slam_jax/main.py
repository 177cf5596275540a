"""The slam_jax command: `python -m slam_jax.main --config configs/NAME.py [--config.KEY=VALUE] [--workdir DIR]`.

The config's `mode` picks the job.
"""

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from slam_jax import selfcheck

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: workdir/<config file name>).")
flags.mark_flags_as_required(["config"])

MODES = {
    "selfcheck": selfcheck.run,
}


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read and write at INFO
    config = _CONFIG.value
    if config.mode not in MODES:
        print(f"error: --config.mode={config.mode!r} is not one of {sorted(MODES)}", file=sys.stderr)
        return 2
    workdir = Path(_WORKDIR.value or Path("workdir") / Path(flags.FLAGS["config"].config_filename).stem)
    workdir.mkdir(parents=True, exist_ok=True)
    MODES[config.mode](config, workdir)
    return 0


if __name__ == "__main__":
    app.run(main)
