"""Every failure a user can cause is one `error:` line naming the file, line or key, with a documented exit code.

Each case runs `python -m slam_jax.main` as a user would; the full disk is simulated in-process (a real one needs a
small filesystem of its own), and a signal stops a training run, which saves and exits 75.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etils import epath
from test_dpo import pretrained  # noqa: F401 - the fixture: a tiny model pre-trained for 2 steps
from test_pretrain import OVERRIDES, tiny_config

from slam_jax import main, status
from slam_jax.training import checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data.synthetic_files": 40}.items()]
# Under root a folder's permissions bind only without the capabilities that override them (setpriv: util-linux).
UNPRIVILEGED = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if os.geteuid() == 0
    else []
)


def slam_jax_main(*args, prefix=(), **popen) -> subprocess.CompletedProcess:
    command = [*prefix, sys.executable, "-m", "slam_jax.main", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, **popen)


def the_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed command, checked to be its only one and to come without a traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The users' files: broken configs, bad unit files, a read-only folder."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "syntax.py").write_text("def get_config(:\n    pass\n")
    (folder / "raises.py").write_text(
        "from configs import pretrain_synthetic\n\n\ndef get_config():\n"
        "    config = pretrain_synthetic.get_config()\n    config.train.learning_rate = config.train.lr\n"
        "    return config\n"
    )
    units = {
        "huge": [1, 10**30],
        "float": [1, 3.0],
        "bool": [True, 2],
        "nested": [[1, 2], [3]],
        "spaced": "1 2 3",
    }
    for name, value in units.items():
        (folder / f"{name}.jsonl").write_text(
            json.dumps({"units": [4, 5]}) + "\n" + json.dumps({"units": value}) + "\n"
        )
    (folder / "binary.jsonl").write_bytes(b'{"units": [1]}\n' + bytes(range(128, 256)) + b"\n")
    (folder / "file").write_text("not a folder\n")
    (folder / "read_only").mkdir(mode=0o555)
    return folder


def data_case(name: str) -> list[str]:
    return ["--config", "configs/pretrain_synthetic.py", *TINY, "--config.data.train_path={inputs}/" + name]


CASES = {
    # name: (arguments ({inputs} and {tmp} filled in), exit code, the error line)
    "missing config file": (["--config", "configs/nope.py"], 2, "error: --config configs/nope.py: no such file"),
    "config syntax error": (
        ["--config", "{inputs}/syntax.py"],
        1,
        "error: {inputs}/syntax.py:1: SyntaxError: invalid syntax",
    ),
    "config raising": (
        ["--config", "{inputs}/raises.py"],
        1,
        "error: {inputs}/raises.py:6: AttributeError: ",
    ),
    "unknown flag": (["--config", "configs/pretrain_synthetic.py", "--bogus"], 2, "error: Unknown command line flag"),
    "bad override value": (
        ["--config", "configs/pretrain_synthetic.py", "--config.train.max_steps=abc"],
        2,
        "error: flag --config.train.max_steps=abc: invalid literal for int()",
    ),
    "context_length=0": (
        ["--config", "configs/pretrain_synthetic.py", "--config.data.context_length=0"],
        1,
        "error: config.data.context_length=0: must be >= 2",
    ),
    "file as workdir": (
        ["--config", "configs/pretrain_synthetic.py", "--workdir", "{inputs}/file"],
        2,
        "error: --workdir {inputs}/file: is a file, not a folder",
    ),
    "huge integer unit": (data_case("huge.jsonl"), 1, f"error: {{inputs}}/huge.jsonl:2: unit {10**30} outside [0, 20)"),
    "float unit": (data_case("float.jsonl"), 1, "error: {inputs}/float.jsonl:2: 'units' holds 3.0 (float)"),
    "boolean unit": (data_case("bool.jsonl"), 1, "error: {inputs}/bool.jsonl:2: 'units' holds True (bool)"),
    "nested units": (data_case("nested.jsonl"), 1, "error: {inputs}/nested.jsonl:2: 'units' holds [1, 2] (list)"),
    "space-separated units": (
        data_case("spaced.jsonl"),
        1,
        "error: {inputs}/spaced.jsonl:2: 'units' is '1 2 3', not <UnN> units",
    ),
    "binary jsonl": (data_case("binary.jsonl"), 1, "error: {inputs}/binary.jsonl:2: not UTF-8 text (byte b'\\x80')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line(case, inputs, tmp_path):
    arguments, code, line = CASES[case]
    fill = {"inputs": inputs, "tmp": tmp_path}
    arguments = [argument.format(**fill) for argument in arguments]
    workdir = [] if "--workdir" in arguments else ["--workdir", tmp_path / "run"]
    result = slam_jax_main(*arguments, *workdir)
    assert result.returncode == code, result.stderr[-3000:]
    assert the_error_line(result).startswith(line.format(**fill))


def test_a_read_only_workdir_is_named(inputs):
    for workdir in (inputs / "read_only", inputs / "read_only" / "run"):
        result = slam_jax_main("--config", "configs/pretrain_synthetic.py", "--workdir", workdir, prefix=UNPRIVILEGED)
        assert result.returncode == 1, result.stderr[-3000:]
        line = the_error_line(result)
        assert line.startswith(f"error: {workdir}") and "Permission denied [EACCES]" in line, line


def test_an_unreadable_audio_file_is_reported_against_the_users_line(pretrained, tmp_path):  # noqa: F811 - fixture
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": [1, 2], "chosen": [3], "rejected": [4]},
        {"prompt": [1], "chosen": "audio/gone.wav", "rejected": [5]},
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = slam_jax_main(
        "--config",
        "configs/slam_dpo.py",
        f"--config.model.init_from={pretrained}",
        f"--config.dpo.train_path={pairs}",
        "--config.data.num_units=20",
        "--config.tokenize.encoder_path=mfcc",
        "--config.tokenize.kmeans_path=",
        "--config.tokenize.fit_units=20",
        "--workdir",
        tmp_path / "dpo",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert the_error_line(result) == (
        f"error: {pairs}:2 [chosen]: audio file 'audio/gone.wav' ({tmp_path}/audio/gone.wav): no such file"
    )


def test_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """ENOSPC raised where Orbax writes a checkpoint's JSON items, in its background threads."""
    path_class, write_text = type(epath.Path(tmp_path)), type(epath.Path(tmp_path)).write_text

    def full_disk(path, *args, **kwargs):
        if "checkpoints" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(path_class, "write_text", full_disk)
    code = main.run_job(tiny_config(**{"train.max_steps": 2, "train.eval_every": 0}), tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == main.EXIT_ERROR and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {tmp_path}/checkpoints/") and "No space left on device [ENOSPC]" in lines[0]


def pipeline_config(folder: Path) -> Path:
    """A pipeline whose one stage is the tiny pre-training."""
    path = folder / "pipeline.py"
    path.write_text(
        "from configs import pretrain_synthetic, slam_pipeline\n\n\ndef get_config():\n"
        "    config = slam_pipeline.get_config()\n    config.pipeline.stages = 'pretrain'\n"
        "    config.pretrain = pretrain_synthetic.get_config()\n    del config.dpo\n    return config\n"
    )
    return path


@pytest.mark.parametrize(
    "mode, signum", [("pretrain", signal.SIGINT), ("pretrain", signal.SIGTERM), ("pipeline", signal.SIGINT)]
)
def test_a_signal_saves_and_exits_75(mode, signum, tmp_path):
    endless = {**OVERRIDES, "train.max_steps": 100000, "checkpoint.every_steps": 1000, "data.synthetic_files": 40}
    if mode == "pipeline":
        config, prefix, run = pipeline_config(tmp_path), "--config.pretrain.", tmp_path / "run" / "pretrain"
    else:
        config, prefix, run = "configs/pretrain_synthetic.py", "--config.", tmp_path / "run"
    overrides = [f"{prefix}{key}={value}" for key, value in endless.items()]
    command = [sys.executable, "-m", "slam_jax.main", "--config", config, *overrides, "--workdir", tmp_path / "run"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert time.time() < deadline and process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=240)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == main.EXIT_PREEMPTED == 75, stderr[-3000:]
    saved = checkpoints.Checkpointer(run / "checkpoints", 0, 0, 3).latest_step()
    assert saved is not None and saved >= 1
    what = "stage 'pretrain'" if mode == "pipeline" else "pretrain"
    assert the_error_line(result) == (
        f"error: {what} was stopped by a signal at step {saved} and saved its checkpoint; "
        "re-run the same command to resume"
    )
    assert not (run / "stage_done.json").exists()
    # The status of the preempted workdir, as `python -m slam_jax.status` reports it (issue 31).
    report = status.status(run)
    assert (report["state"], report["job"], report["step"], report["held_by"]) == ("stopped", "pretrain", saved, None)
    assert report["checkpoint"] == str(run / "checkpoints" / str(saved)) and report["max_steps"] == 100000
    assert report["steps_left"] == 100000 - saved and report["layout"]["processes"] == 1


def test_a_second_ctrl_c_is_left_to_the_system():
    """The first Ctrl-C asks the loop to save and stop; the second gets the system's action (the process ends at
    once, even inside a device step), and `restore` puts the previous handlers back."""
    from slam_jax.training import loop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    preemption = loop.Preemption()
    try:
        assert not preemption.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # Python runs the handler at the next bytecode boundary
        assert preemption.requested and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        preemption.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
