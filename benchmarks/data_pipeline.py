"""Tokens/s of packed 8 x 1024 batches from the training pipeline, against what the train step consumes.

    python -m benchmarks.data_pipeline [--json] [--repeats 3] [--train-tokens-per-second X]

A synthetic corpus (`slam_jax.data.synthetic`, the stochastic unit grammar) is written as features.jsonl and
prepared into a unit store (`slam_jax.data.ingest.prepare`) in a temporary folder; `pipeline.train_dataset`
then plans global batches (Grain's shuffled order, first-fit packing from chunk lengths) and reads their rows into
batches of 8 rows x 1024 tokens, as the training loop does. `--rows-of P` builds only the rows one of P processes
holds (what each host of a P-host run reads), reported as tokens/s per host.
Each timed window pulls `--batches` batches after a warm-up; tokens count every slot of a row (what the step
consumes), with the share of real (non-padding) tokens reported beside. Without `--train-tokens-per-second`,
the slam train step (batch 1 x 1024, bf16 compute) is measured briefly in the same run.
`--bucket gs://BUCKET/FOLDER` (or `local-server`: a fake-gcs-server the benchmark starts on 127.0.0.1) uploads the
same store there and measures the pipeline reading it from the bucket too (by byte ranges, as training does), after
the local figure, with the same settings.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import common
from benchmarks.fake_gcs import FakeGcs
from slam_jax import paths
from slam_jax.data import ingest, pipeline, synthetic, unit_store
from slam_jax.paths import Path

ROWS, LENGTH = 8, 1024
NUM_UNITS = 500
TARGET_MULTIPLE = 20.0


def prepare_store(folder: Path, num_files: int) -> tuple[Path, dict]:
    """A synthetic corpus of `num_files` files prepared into a unit store; its train split and the summary."""
    corpus = synthetic.write_jsonl(folder / "features.jsonl", num_files, NUM_UNITS, seed=0)
    summary = ingest.prepare(str(corpus), folder / "store", NUM_UNITS)
    return folder / "store" / "train", summary


def window(iterator, batches: int) -> tuple[float, int]:
    """Seconds to pull `batches` batches, and the real (non-padding) tokens in them."""
    real = 0
    start = time.perf_counter()
    for _ in range(batches):
        real += int(np.count_nonzero(next(iterator)["segment_ids"]))
    return time.perf_counter() - start, real


def measure_pipeline(
    store: Path, batches: int, repeats: int, threads: int = pipeline.READ_THREADS, hosts: int = 1
) -> dict:
    """Median slot tokens/s over `repeats` windows of `batches` batches, after a warm-up window, with `threads`
    reader threads; `hosts` > 1: only the first host's 1/`hosts` of each batch's rows is built (per-host figure)."""
    rows = list(range(ROWS // hosts)) if hosts > 1 else None
    iterator = pipeline.train_dataset(
        [str(store)], None, LENGTH, rows_per_batch=ROWS, seed=0, rows=rows, threads=threads
    )
    window(iterator, batches)
    windows = [window(iterator, batches) for _ in range(repeats)]
    iterator.close()
    seconds = [elapsed for elapsed, _ in windows]
    slots = batches * (ROWS // hosts) * LENGTH
    return {
        "tokens_per_second": slots / common.median(seconds),
        "real_token_fraction": sum(real for _, real in windows) / (slots * repeats),
        "seconds_per_window": seconds,
        "batches_per_window": batches,
        "threads": threads,
        "hosts": hosts,
    }


def measure_train_step(repeats: int) -> float:
    """Tokens/s of the slam train step at batch 1 x 1024 (median of `repeats` steps after a warm-up)."""
    from benchmarks import train_step
    from configs import slam as slam_config
    from slam_jax.models import config as model_config

    cfg = model_config.slam(compute_dtype="bfloat16")
    run, _ = train_step.jax_step(cfg, train_step.batch_ids(cfg.vocab_size), slam_config.get_config().train)
    run()
    seconds = [common.seconds(run) for _ in range(repeats)]
    return train_step.BATCH * train_step.LENGTH / common.median(seconds)


def report_lines(result: dict) -> list[str]:
    return [
        f"pipeline, packed {ROWS} x {LENGTH} global batches from a synthetic store of "
        f"{result['store']['train_num_tokens']:,} tokens, {result['threads']} reader threads, the rows of 1 of "
        f"{result['hosts']} host(s): {result['tokens_per_second']:,.0f} tokens/s per host "
        f"({result['real_token_fraction']:.1%} real tokens)",
        f"train step ({result['train_step_source']}): {result['train_step_tokens_per_second']:,.1f} tokens/s",
        f"pipeline / train step: {result['multiple']:,.0f}x (target >= {TARGET_MULTIPLE:g}x: {result['meets_target']})",
        f"machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
        f"load average {result['machine']['load_average']}",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows after the warm-up (median reported)")
    parser.add_argument("--batches", type=int, default=200, help="batches per timed window")
    parser.add_argument("--files", type=int, default=20_000, help="synthetic files in the store (configs: 20,000)")
    parser.add_argument("--threads", type=int, default=pipeline.READ_THREADS, help="reader threads")
    parser.add_argument("--rows-of", type=int, default=1, help="build one host's rows of a run on this many hosts")
    parser.add_argument(
        "--train-tokens-per-second", type=float, default=0.0, help="train-step tokens/s (0: measure it now)"
    )
    parser.add_argument("--bucket", default="", help="also read the store from this gs:// folder ('local-server')")
    return parser.parse_args(argv)


def measure_in_bucket(store: Path, bucket: str, folder: Path, args) -> dict:
    """The pipeline's figures reading `store` uploaded to `bucket` (a folder URL, or 'local-server'), streamed by
    byte ranges and from the local cache (`SLAM_JAX_STORE_CACHE` never / auto; `copy_seconds`: the first open,
    which downloads the shards)."""
    found = {}
    with contextlib.ExitStack() as stack:
        if bucket == "local-server":
            server = FakeGcs(folder / "fake-gcs", folder / "fake-gcs.log")
            stack.callback(server.stop)
            stack.enter_context(server.use())
            bucket = f"{server.bucket('pipeline')}/store"
        remote = paths.Path(bucket) / "train"
        paths.upload_dir(Path(store), remote)
        before = {name: os.environ.get(name) for name in (unit_store.STORE_CACHE_VARIABLE, paths.CACHE_VARIABLE)}
        os.environ[paths.CACHE_VARIABLE] = str(folder / "cache")
        try:
            for mode in ("never", "auto"):
                os.environ[unit_store.STORE_CACHE_VARIABLE] = mode
                start = time.perf_counter()
                unit_store.UnitStore(remote)
                opened = time.perf_counter() - start
                figures = measure_pipeline(remote, args.batches, args.repeats, args.threads, args.rows_of)
                found["streamed" if mode == "never" else "cached"] = {**figures, "open_seconds": opened}
        finally:
            for name, value in before.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        server_text = "fake-gcs-server on 127.0.0.1" if args.bucket == "local-server" else "given"
        return {**found, "url": str(remote), "server": server_text}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slam_jax_pipeline_") as folder:
        store, summary = prepare_store(Path(folder), args.files)
        figures = measure_pipeline(store, args.batches, args.repeats, args.threads, args.rows_of)
        bucket = measure_in_bucket(store, args.bucket, Path(folder), args) if args.bucket else None
    train = args.train_tokens_per_second or measure_train_step(args.repeats)
    multiple = figures["tokens_per_second"] / train
    result = {
        "benchmark": "data_pipeline",
        "rows": ROWS,
        "length": LENGTH,
        "repeats": args.repeats,
        **figures,
        "store": summary,
        "train_step_tokens_per_second": train,
        "train_step_source": "argument" if args.train_tokens_per_second else "measured (slam, 1 x 1024, bf16)",
        "multiple": multiple,
        "target_multiple": TARGET_MULTIPLE,
        "meets_target": multiple >= TARGET_MULTIPLE,
        "machine": common.machine(),
    }
    lines = report_lines(result)
    if bucket:
        result["bucket"] = bucket
        for way in ("streamed", "cached"):
            speed, local = bucket[way]["tokens_per_second"], figures["tokens_per_second"]
            lines.append(
                f"from the bucket, {way} ({bucket['url']}, {bucket['server']}; opened in "
                f"{bucket[way]['open_seconds']:.2f} s): {speed:,.0f} tokens/s ({speed / local:.2f}x local; "
                f"{speed / train:,.2f}x the train step)"
            )
    common.emit(result, args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
