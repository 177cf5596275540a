"""benchmarks/vocoder_train.py: slam_jax's compiled vocoder training step beside hifi_gan/train.py's PyTorch step, on
one batch, from the same weights (the reference's init copied into slam_jax's training state: the generator through
the converter and `split_weight_norm`, the discriminators by name). Both are timed, and the losses of every step
agree: the first step's within 1e-4 relative (the discriminator loss of the initial weights, then the generator's
losses through the updated discriminators), the second's too, after both AdamW updates. So the compiled step is
the reference's step, not only a step of the same shape."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import vocoder_train

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_run_times_both_steps_and_their_losses_agree():
    command = [sys.executable, "-m", "benchmarks.vocoder_train", "--quick", "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["size"], result["rows"], result["frames"], result["repeats"]) == ("tiny", 2, 40, 1)
    assert result["audio_seconds"] == 2 * 40 * 64 / 16_000
    implementations = result["implementations"]
    assert set(implementations) == {vocoder_train.REFERENCE, vocoder_train.OURS}
    for figures in implementations.values():
        assert figures["seconds_per_step"] > 0 and figures["audio_seconds_per_second"] > 0
    assert "left out of both sides" in result["duration_predictor"]

    steps = result["losses_by_step"]
    assert len(steps[vocoder_train.OURS]) == len(steps[vocoder_train.REFERENCE]) == 2  # the warm-up, 1 timed
    for ours, theirs in zip(steps[vocoder_train.OURS], steps[vocoder_train.REFERENCE], strict=True):
        assert set(ours) == set(theirs) == set(vocoder_train.LOSSES)
        for name in vocoder_train.LOSSES:
            assert abs(ours[name] - theirs[name]) <= 1e-4 * abs(theirs[name]), (name, ours[name], theirs[name])
    first = steps[vocoder_train.REFERENCE][0]
    assert first["loss"] > first["mel_l1"] * 45 > 0 and first["discriminator_loss"] > 0  # the terms are all there
    assert result["first_step_max_relative_difference"] <= 1e-4
    assert steps[vocoder_train.OURS][1]["loss"] != steps[vocoder_train.OURS][0]["loss"]  # the state was updated
