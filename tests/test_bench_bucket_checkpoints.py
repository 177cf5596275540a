"""benchmarks/bucket_checkpoints.py at the tiny preset: the project's Checkpointer on a local folder and on the
test's fake-gcs-server bucket, every figure present and the restored state equal to the saved one."""

import json
import urllib.request

import jax
import numpy as np

from benchmarks import bucket_checkpoints
from slam_jax.training import step


def test_tiny_state_round_trips_on_disk_and_bucket(gcs, tmp_path, capsys):
    bucket = gcs.bucket("bench-ckpt")
    argv = ["--preset", "tiny", "--repeats", "2", "--bucket", bucket, "--tmp", str(tmp_path), "--json"]
    assert bucket_checkpoints.main(argv) == 0
    result = json.loads(capsys.readouterr().out)

    cfg = bucket_checkpoints.model_settings("tiny")
    maker = bucket_checkpoints.StateMaker(cfg)
    cfg_state_shapes = (maker.abstract.params, maker.abstract.opt_state)
    assert result["preset"] == "tiny" and result["bucket"] == bucket and result["repeats"] == 2
    assert result["num_params"] == cfg.num_params() > 0
    assert result["params_bytes"] == 4 * result["num_params"]  # float32 master params
    # AdamW's two float32 moments, plus the chain's int32 step counts
    assert 2 * result["params_bytes"] <= result["opt_state_bytes"] <= 2 * result["params_bytes"] + 64
    assert result["state_bytes"] == result["params_bytes"] + result["opt_state_bytes"]
    assert result["restored_equal"] is True
    for name in ("local", "bucket"):
        figures = result["targets"][name]
        assert len(figures["rounds"]) == 2, name
        for index, found in enumerate(figures["rounds"]):
            assert found["mismatched_leaves"] == [] and found["meta_equal"] and found["shardings_equal"], name
            assert found["steps_listed"] == [index + 1], name  # a fresh folder each round
            assert 0 < found["save_seconds"] <= found["commit_seconds"], name
            assert found["open_seconds"] > 0 and found["restore_seconds"] > 0, name
            assert found["leaves_checked"] == len(jax.tree.leaves(cfg_state_shapes)), name
            # the arrays (random: zstd saves a few percent) plus Orbax's indexes and metadata
            assert 0.8 * result["state_bytes"] < found["stored_bytes"] <= result["state_bytes"] + 512 * 1024, name
            for phase in ("save", "restore"):
                assert found["peak_rss_bytes"][phase]["client"] > result["state_bytes"], (name, phase)
        assert figures["restore_seconds"] == float(np.median(figures["all_restore_seconds"])), name
        assert figures["restore_mib_per_second"] > 0 and figures["restored_equal"], name
    assert set(result["bucket_over_local"]) == {"save_seconds", "commit_seconds", "open_seconds", "restore_seconds"}
    # every round's folder was removed, on the bucket too
    listing = json.loads(urllib.request.urlopen(f"{gcs.url}/storage/v1/b/bench-ckpt/o").read())
    assert not listing.get("items"), listing
    assert not list(tmp_path.iterdir())


def test_the_state_is_the_training_state_with_random_leaves():
    maker = bucket_checkpoints.StateMaker(bucket_checkpoints.model_settings("tiny"), seed=3)
    state = maker.make()
    assert isinstance(state, step.TrainState)
    assert jax.tree.structure(state) == jax.tree.structure(maker.abstract)
    for leaf, shape in zip(jax.tree.leaves(state), jax.tree.leaves(maker.abstract), strict=True):
        assert leaf.shape == shape.shape and leaf.dtype == shape.dtype and leaf.sharding == shape.sharding
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.std(np.asarray(leaf)) > 0  # not zeros, which would compress to nothing
    assert bucket_checkpoints.saved_bytes(state) == sum(
        leaf.nbytes for leaf in jax.tree.leaves((state.params, state.opt_state))
    )
    # the fingerprints are what the restore is checked against: the same state gives the same ones, a change of
    # one value in one leaf changes that leaf's only
    expected = bucket_checkpoints.fingerprints(state)
    assert expected == bucket_checkpoints.fingerprints(maker.make())
    params = jax.tree.map(lambda leaf: leaf, state.params)
    params["embed_tokens"] = params["embed_tokens"].at[0, 0].add(1.0)
    changed = bucket_checkpoints.fingerprints(state._replace(params=params))
    assert [name for name in expected if expected[name] != changed[name]] == ["[0]['embed_tokens']"]


def test_the_benchmarks_own_server_logs_to_a_file_and_stops(tmp_path):
    server = bucket_checkpoints.FakeGcs(tmp_path / "root", tmp_path / "server.log")
    try:
        assert server.bucket("made") == "gs://made" and server.bucket("made") == "gs://made"  # twice: 409 is fine
        assert (tmp_path / "server.log").is_file() and server.memory()["rss_bytes"] > 0
    finally:
        server.stop()
    assert server.process.poll() is not None
