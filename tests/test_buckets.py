"""The bucket servers the tests use, and `slam_jax.paths` against them: paths, the cache, folder uploads."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from slam_jax import paths


@pytest.mark.parametrize("server", ["gcs", "s3"])
def test_paths_and_orbax_work_on_both_servers(server, request):
    server = request.getfixturevalue(server)
    root = paths.Path(server.bucket("smoke")) / "a"
    assert paths.is_remote(root) and str(root) == f"{server.scheme}://smoke/a"
    (root / "x.txt").write_text("hello")
    assert (root / "x.txt").read_text() == "hello" and [p.name for p in root.iterdir()] == ["x.txt"]
    if server.scheme == "s3":
        with pytest.raises(ValueError, match=r"s3://smoke/a/ckpt: checkpoints cannot be on s3:// \(Orbax"):
            paths.check_array_storage(root / "ckpt", "checkpoints")
        return
    paths.check_array_storage(root / "ckpt", "checkpoints")
    manager = ocp.CheckpointManager(str(root / "ckpt"))
    manager.save(3, args=ocp.args.StandardSave({"w": np.arange(6.0)}))
    manager.wait_until_finished()
    restored = manager.restore(3, args=ocp.args.StandardRestore({"w": np.zeros(6)}))
    np.testing.assert_array_equal(restored["w"], np.arange(6.0))


def test_files_write_read_and_folders_on_a_bucket(gcs, tmp_path):
    from slam_jax import files
    from slam_jax.errors import DataError

    root = paths.Path(gcs.bucket("files")) / "run"
    files.write_text(root / "a" / "one.jsonl", '{"x": 1}\n\n{"x": 2}\n')
    files.write_text(root / "a" / "b" / "two.jsonl", '{"x": 3}\n')
    assert files.read_jsonl(root / "a" / "one.jsonl") == [{"x": 1}, {"x": 2}]
    assert [str(p) for p in files.expand_paths(f"{root}/a")] == [f"{root}/a/b/two.jsonl", f"{root}/a/one.jsonl"]
    assert [str(p) for p in files.expand_paths(f"{root}/a/*.jsonl")] == [f"{root}/a/one.jsonl"]
    assert [where for where, _ in files.read_records(root / "a" / "one.jsonl")] == [
        f"{root}/a/one.jsonl:1",
        f"{root}/a/one.jsonl:3",
    ]
    with pytest.raises(DataError, match="no such file, folder or glob match"):
        files.expand_paths(f"{root}/nothing")
    folder = root / "out"
    with files.atomic_dir(folder) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "data.bin").write_bytes(b"\0" * 10)
        (staging / "manifest.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "sub"]
    with pytest.raises(FileExistsError, match="already exists"):
        with files.atomic_dir(folder):
            pass
    with pytest.raises(RuntimeError):  # a failed block leaves the folder as it was
        with files.atomic_dir(folder, overwrite=True) as staging:
            (staging / "manifest.json").write_text('{"new": 1}')
            raise RuntimeError
    assert (folder / "manifest.json").read_text() == "{}"
    assert paths.index_last(["manifest.json", "sub/x.json", "a.npy"]) == ["a.npy", "sub/x.json", "manifest.json"]


def test_local_copy_is_cached_and_renewed(gcs, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_VARIABLE, str(tmp_path / "cache"))
    folder = paths.Path(gcs.bucket("cache")) / "model"
    (folder / "w.bin").write_bytes(b"1234")
    (folder / "config.json").write_text("{}")
    copy = paths.local_copy(folder)
    assert copy.name == "model" and (copy / "w.bin").read_bytes() == b"1234"
    stamp = (copy / "w.bin").stat().st_mtime_ns
    assert paths.local_copy(folder) == copy and (copy / "w.bin").stat().st_mtime_ns == stamp  # reused
    (folder / "w.bin").write_bytes(b"123456")
    assert (paths.local_copy(folder) / "w.bin").read_bytes() == b"123456"  # renewed
    with pytest.raises(FileNotFoundError, match="no such object"):
        paths.local_copy(folder / "missing")


def test_listings_see_objects_written_by_others(gcs):
    """Another process (or TensorStore) writes behind fsspec's back: listings must not come from a stale cache."""
    import gcsfs

    root = paths.Path(gcs.bucket("listings")) / "d"
    (root / "a").write_text("a")
    assert [p.name for p in root.iterdir()] == ["a"]
    other = gcsfs.GCSFileSystem(skip_instance_cache=True)
    other.pipe_file("listings/d/b", b"b")
    assert [p.name for p in root.iterdir()] == ["a", "b"] and (root / "b").exists()


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_a_store_in_a_bucket_reads_as_on_a_disk_cached_or_streamed(gcs, tmp_path, monkeypatch, mode):
    """SLAM_JAX_STORE_CACHE=auto copies the token shards into the local cache once and maps them; never streams them
    by byte ranges and writes nothing locally: either way every sequence and slice is the local store's."""
    from slam_jax.data import ingest, synthetic, unit_store

    monkeypatch.setenv(paths.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv(unit_store.STORE_CACHE_VARIABLE, mode)
    corpus = synthetic.write_jsonl(tmp_path / "features.jsonl", 40, 20, seed=1)
    remote = paths.Path(gcs.bucket("stores")) / mode
    ingest.prepare(str(corpus), tmp_path / "local", 20, 0.0)
    ingest.prepare(str(corpus), remote, 20, 0.0)
    local, streamed = unit_store.UnitStore(tmp_path / "local" / "train"), unit_store.UnitStore(remote / "train")
    assert len(local) == len(streamed) == 40 and np.array_equal(local.lengths(), streamed.lengths())
    for index in range(len(local)):
        np.testing.assert_array_equal(streamed[index], local[index])
        np.testing.assert_array_equal(streamed.slice(index, 1, 5), local.slice(index, 1, 5))
    copies = list((tmp_path / "cache").rglob("*.tokens.npy"))
    assert len(copies) == (1 if mode == "auto" else 0)
    monkeypatch.setenv(paths.CACHE_LIMIT_VARIABLE, "0.000001")  # a store over half the cache is streamed
    assert not unit_store.cached(streamed.manifest)
