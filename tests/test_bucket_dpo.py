"""DPO with its starting model, its preference pairs and its workdir in a bucket (fake-gcs-server on 127.0.0.1)."""

import pytest
from test_bucket_training import objects
from test_pretrain import tiny_config

from slam_jax import paths
from slam_jax.training import checkpoints, loop


def test_dpo_from_a_bucket_into_a_bucket_equals_dpo_on_a_disk(gcs, tmp_path):
    """DPO with its starting model (a pre-training workdir), its pairs and its workdir in the bucket: the same
    losses as from local copies of the same files; its reference log-probs are stored beside the pairs there."""
    from test_dpo import dpo_config, write_pairs

    from slam_jax.training import dpo

    root = paths.Path(gcs.bucket("dpo"))
    loop.run(tiny_config(**{"train.max_steps": 2, "train.eval_every": 0}), root / "pretrained")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    (root / "pairs.jsonl").write_bytes(pairs.read_bytes())
    in_bucket = dpo.run(dpo_config(root / "pretrained", root / "pairs.jsonl", **{"train.max_steps": 3}), root / "run")
    local_start = paths.local_copy(root / "pretrained")
    on_disk = dpo.run(dpo_config(local_start, pairs, **{"train.max_steps": 3}), tmp_path / "run")
    assert in_bucket["step"] == on_disk["step"] == 3 and in_bucket["loss"] == pytest.approx(on_disk["loss"], rel=1e-6)
    stored = [name for name in objects(f"{root}/run/data") if name.startswith("preference-")]
    assert any("/reference_logps-" in name for name in stored), stored
    assert checkpoints.committed_steps(root / "run" / "checkpoints")[-1] == 3
