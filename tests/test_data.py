"""Ingestion of the reference formats, the unit store, chunking, packing, mixtures and resumable iterators."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slam_jax.data import ingest, pipeline
from slam_jax.data.unit_store import UnitStore
from slam_jax.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_reference_formats_become_bos_units_eos(tmp_path):
    write_jsonl(tmp_path / "features.jsonl", [{"units": [3, 0, 7], "duration": [1, 2, 1], "file_name": "a.wav"}])
    write_jsonl(tmp_path / "tokens.jsonl", [{"audio_repr": "<Un5><Un49><Un0>", "file_name": "b.wav"}])
    pq.write_table(pa.table({"units": [[9, 9, 1]], "file_name": ["c.wav"]}), tmp_path / "hf.parquet")
    summary = ingest.prepare(str(tmp_path), tmp_path / "out", num_units=50, valid_fraction=0.0)
    store = UnitStore(tmp_path / "out" / "train")
    assert sorted(tuple(store[i]) for i in range(len(store))) == sorted(
        [(1, 5, 2, 9, 1), (1, 7, 51, 2, 1), (1, 11, 11, 3, 1)]
    )
    assert summary["train_num_tokens"] == 15 and store.manifest["sources"]["tokens.jsonl"]["files"] == 1


def test_split_is_stable_and_about_the_requested_fraction(tmp_path):
    records = [{"units": [1, 2], "file_name": f"f{i}.wav"} for i in range(4000)]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_jsonl(tmp_path / "b.jsonl", records[::-1])
    first = ingest.prepare(str(tmp_path / "a.jsonl"), tmp_path / "out_a", num_units=5, valid_fraction=0.05)
    second = ingest.prepare(str(tmp_path / "b.jsonl"), tmp_path / "out_b", num_units=5, valid_fraction=0.05)
    assert first["valid_num_sequences"] == second["valid_num_sequences"]
    assert 150 < first["valid_num_sequences"] < 250
    assert ingest.is_validation("f7.wav", 0.05) == ingest.is_validation("f7.wav", 0.05)


def test_split_ignores_the_folder():
    """A dataset tokenised under another working directory keeps its split (only the base name is hashed)."""
    names = [f"clip_{i}.flac" for i in range(2000)]
    here = [ingest.is_validation(f"/work/run1/audio/{name}", 0.1) for name in names]
    there = [ingest.is_validation(f"/tmp/other/run2/{name}", 0.1) for name in names]
    bare = [ingest.is_validation(name, 0.1) for name in names]
    assert here == there == bare and 100 < sum(here) < 300


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"units": [1, 2', "a.jsonl:2: not valid JSON"),
        ('{"file_name": "x.wav"}', "a.jsonl:2: no 'units' or 'audio_repr' field"),
        ('{"units": [1, 700]}', "a.jsonl:2: unit 700 outside [0, 500)"),
        ('{"units": "oops"}', "a.jsonl:2: 'units' is 'oops', not <UnN> units"),
        ('{"audio_repr": ""}', None),
        ("[1, 2, 3]", "a.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "a.jsonl").write_text('{"units": [1, 2]}\n' + line + "\n")
    if message is None:  # an empty units string is an empty sequence: skipped and counted
        assert ingest.prepare(str(tmp_path / "a.jsonl"), tmp_path / "out", 500, 0.0)["skipped_empty"] == 1
        return
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace(")", r"\)")):
        ingest.prepare(str(tmp_path / "a.jsonl"), tmp_path / "out", num_units=500)
    assert not (tmp_path / "out").exists()


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no non-empty sequences"):
        ingest.prepare(str(tmp_path / "a.jsonl"), tmp_path / "out", num_units=500)
    with pytest.raises(DataError, match="no such file"):
        ingest.prepare(str(tmp_path / "missing.jsonl"), tmp_path / "out", num_units=500)


@pytest.fixture
def store(tmp_path):
    lengths = [3, 10, 25, 8]
    records = [{"units": list(range(n)), "file_name": f"f{i}.wav"} for i, n in enumerate(lengths)]
    write_jsonl(tmp_path / "a.jsonl", records)
    ingest.prepare(str(tmp_path / "a.jsonl"), tmp_path / "out", num_units=30, valid_fraction=0.0)
    return str(tmp_path / "out" / "train")


def test_chunks_are_consecutive_with_bos_first_and_eos_last(store):
    source = pipeline.ChunkSource(UnitStore(store), context_length=8)
    chunks = [source[i] for i in range(len(source))]
    assert [len(chunk) for chunk in chunks] == [5, 8, 4, 8, 8, 8, 3, 8, 2]
    file_two = np.concatenate(chunks[3:7])
    np.testing.assert_array_equal(file_two, [1, *range(2, 27), 1])
    assert chunks[3][0] == 1 and 1 not in chunks[4] and chunks[6][-1] == 1


def test_packed_rows_hold_whole_chunks_with_restarting_positions(store):
    batch = next(iter(pipeline.train_dataset([store], None, 8, rows_per_batch=4, seed=0, packing=True)))
    for row in range(4):
        segments = batch["segment_ids"][row]
        for segment in set(segments[segments > 0].tolist()):
            where = np.flatnonzero(segments == segment)
            np.testing.assert_array_equal(batch["positions"][row][where], np.arange(len(where)))
        assert np.all(batch["input_ids"][row][segments == 0] == 0)


def test_iterator_state_resumes_exactly(store):
    dataset = pipeline.train_dataset([store], None, 8, rows_per_batch=2, seed=3, packing=True)
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(7)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_mixture_weights_set_the_proportions(tmp_path):
    for name, unit in (("a", 1), ("b", 2)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"units": [unit] * 6, "file_name": f"{name}{i}"} for i in range(50)])
        ingest.prepare(str(tmp_path / f"{name}.jsonl"), tmp_path / name, num_units=5, valid_fraction=0.0)
    stores = [str(tmp_path / "a" / "train"), str(tmp_path / "b" / "train")]
    iterator = iter(pipeline.train_dataset(stores, [0.8, 0.2], 8, rows_per_batch=10, seed=0, packing=False))
    rows = np.concatenate([next(iterator)["input_ids"] for _ in range(40)])
    share_a = np.mean(rows[:, 1] == 3)
    assert 0.75 < share_a < 0.85


def test_each_process_builds_its_rows_of_one_global_batch(store):
    """The global batch is planned from global indices: split the rows among 'processes' any way and the rows are
    the same, in the same places, batch after batch (and the data position is the same global integer)."""
    whole = pipeline.train_dataset([store], None, 8, rows_per_batch=4, seed=5, packing=True)
    parts = [pipeline.train_dataset([store], None, 8, 4, 5, True, rows=rows) for rows in ([0, 1], [2], [3])]
    for _ in range(6):
        expected = next(whole)
        got = [next(part) for part in parts]
        for key in expected:
            np.testing.assert_array_equal(np.concatenate([batch[key] for batch in got]), expected[key])
        assert {part.position for part in parts} == {whole.position}


def test_a_global_position_resumes_on_another_split(store):
    first = pipeline.train_dataset([store], None, 8, 4, 1, True)
    for _ in range(3):
        next(first)
    expected = [next(first) for _ in range(4)]
    position = pipeline.position_after([store], None, 8, 4, 1, True, steps=3)
    resumed = pipeline.train_dataset([store], None, 8, 4, 1, True, rows=[2, 3], start=position)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key][2:])


def test_validation_batches_are_global_and_cover_every_chunk_once(store):
    whole = list(pipeline.eval_dataset([store], 8, rows_per_batch=3, packing=True))
    halves = [list(pipeline.eval_dataset([store], 8, 3, True, rows=rows)) for rows in ([0], [1, 2])]
    assert len(halves[0]) == len(halves[1]) == len(whole)  # every process runs the same number of batches
    tokens = sum(int(np.count_nonzero(batch["segment_ids"])) for batch in whole)
    assert tokens == 5 + 8 + 4 + 8 + 8 + 8 + 3 + 8 + 2
    for batch, first, rest in zip(whole, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([first["input_ids"], rest["input_ids"]]), batch["input_ids"])
