"""benchmarks/vocoder_learning.py runs the real tokeniser and vocoder job end to end at a tiny size, and its unit
recovery measures what it says: the real audio re-tokenised gives back its own units."""

import json
import math

import pytest

from benchmarks import vocoder_learning

# The smallest job that still has both discriminators: one period, one residual block kernel (a fast compile).
TINY = [
    "--set=model.periods=(2,)",
    "--set=model.resblock_kernel_sizes=(3,)",
    "--set=model.resblock_dilation_sizes=((1, 3, 5),)",
]


def test_the_learning_benchmark_scores_every_stage_and_recovers_the_real_audios_units(tmp_path, monkeypatch):
    # The job's commands on one CPU device, as the benchmark runs on this machine (the session forces eight).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    out = tmp_path / "out"
    args = ["--sentences", "6", "--steps", "2", "--valid-clips", "2", "--units", "16", "--out", str(out), *TINY]
    assert vocoder_learning.main(args) == 0
    result = json.loads((out / "learning.json").read_text())
    assert result["sentences"] == 6 and result["stages"] == [2] and len(result["valid_clips"]) == 2
    assert result["train_clips"] == 4 and all(frames > 8 for frames in result["valid_frames"])
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["real audio", "MFCC inverse", "untrained (step 0)", "trained 2 steps"]
    real = rows["real audio"]
    assert real["unit_recovery"] == 1.0 and real["per_clip_unit_recovery"] == [1.0, 1.0]
    assert real["mel_l1"] == 0.0
    for row in result["rows"]:
        shares = [row["unit_recovery"], *row["per_clip_unit_recovery"]]
        assert all(0.0 <= share <= 1.0 for share in shares), row["name"]
        assert len(row["per_clip_mel_l1"]) == 2 and math.isfinite(row["mel_l1"]) and row["mel_l1"] >= 0.0
    for name, steps in (("untrained (step 0)", 0), ("trained 2 steps", 2)):
        row = rows[name]
        assert row["steps"] == steps and (out / "vocoders" / f"step_{steps}" / "vocoder_config.json").is_file()
        # The benchmark's mel L1 is the job's own validation figure, computed the same way on the same vocoder.
        assert row["mel_l1"] == pytest.approx(row["validation_mel_l1"], rel=1e-3)
    assert rows["trained 2 steps"]["train_seconds"] > rows["untrained (step 0)"]["train_seconds"] > 0
    assert 0.0 < result["majority_unit_share"] <= 1.0
    timing = result["timing"]
    assert timing["seconds_per_step"] > 0 and timing["steps_timed"] == 1
    assert set(timing["stage_seconds"]) == {"0", "2"}
