"""benchmarks/data_pipeline.py runs the real pipeline, also on a store uploaded to a bucket (streamed and cached)."""

import json

from benchmarks import data_pipeline


def test_the_pipeline_benchmark_reads_a_local_and_a_bucket_store(capsys):
    args = ["--json", "--files", "60", "--batches", "2", "--repeats", "1", "--train-tokens-per-second", "1e6"]
    assert data_pipeline.main([*args, "--bucket", "local-server"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["tokens_per_second"] > 0 and result["store"]["train_num_tokens"] > 0
    bucket = result["bucket"]
    assert bucket["url"] == "gs://pipeline/store/train" and bucket["server"] == "fake-gcs-server on 127.0.0.1"
    for way in ("streamed", "cached"):
        assert bucket[way]["tokens_per_second"] > 0 and bucket[way]["open_seconds"] >= 0
        assert bucket[way]["real_token_fraction"] == result["real_token_fraction"]  # the same batches
