"""Bad input to the conversion commands: one-line errors naming file and tensor, nothing half-written."""

import hashlib
import json
import os
import stat
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans
from speech_fixtures import random_hubert

from conversion import flax_to_hf, hf_to_flax, hubert_to_flax, kmeans_to_npy, safetensors_io
from slam_jax.files import atomic_dir


def run_convert(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()  # drop what building the fixture printed
    code = hf_to_flax.main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, stderr: str, out, *fragments: str) -> None:
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a staging folder was left behind"


def rewrite_config(folder, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_folder(capsys, tmp_path):
    code, err = run_convert(capsys, "--model", tmp_path / "absent", "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(tmp_path / "absent"), "no such checkpoint folder")


def test_missing_config_and_missing_weights(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    (folder / "config.json").unlink()
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(folder / "config.json"), "not found")

    _, folder = hf_checkpoint(name="no_weights")
    (folder / "model.safetensors").unlink()
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(folder), "no model.safetensors")


def test_missing_shard(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint(save_kwargs={"max_shard_size": "40KB"})
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(shard), "not found")


def test_unsupported_model_type(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    rewrite_config(folder, model_type="mistral")
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    expected = "model_type 'mistral' is not one of ['qwen2', 'llama']"
    assert_clean_failure(code, err, tmp_path / "out", str(folder / "config.json"), expected)


def test_qwen2_weights_labelled_llama_are_refused_not_stripped_of_their_biases(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    rewrite_config(folder, model_type="llama")
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(folder / "config.json"), "has no q/k/v biases")


def test_shape_mismatch_names_file_and_tensor(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    rewrite_config(folder, intermediate_size=81)
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(
        code,
        err,
        tmp_path / "out",
        str(folder / "model.safetensors"),
        "model.layers.0.mlp.gate_proj.weight",
        "(80, 48)",
        "(81, 48)",
    )


def test_missing_tensor_is_named(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    reader = safetensors_io.SafetensorsFile(folder / "model.safetensors")
    kept = {name: np.array(reader.get(name)) for name in reader.keys() if name != "model.norm.weight"}
    safetensors_io.save_file(kept, folder / "model.safetensors", {"format": "pt"})
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "model.norm.weight", "missing")


def test_truncated_safetensors_names_file_and_tensor(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(weights), "tensor ", "truncated or corrupt")


@pytest.mark.parametrize("content", [b"", b"\x05\x00", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"])
def test_garbage_safetensors_header(capsys, hf_checkpoint, tmp_path, content):
    _, folder = hf_checkpoint()
    (folder / "model.safetensors").write_bytes(content)
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", str(folder / "model.safetensors"), "corrupt safetensors")


def test_non_empty_out_is_refused_and_kept(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run_convert(capsys, "--model", folder, "--out", out)
    assert code == 1 and "not empty" in err and (out / "keep.txt").read_text() == "precious"
    assert flax_to_hf.main(["--checkpoint", str(tmp_path), "--out", str(out)]) == 1
    assert (out / "keep.txt").read_text() == "precious"


def test_export_of_a_non_model_dir(capsys, tmp_path):
    capsys.readouterr()
    assert flax_to_hf.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path) in err and len(err.splitlines()) == 1


def test_failure_inside_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["conversion.hf_to_flax", "conversion.flax_to_hf"])
def test_commands_have_help_and_fail_without_traceback(module, tmp_path):
    help_run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "usage:" in help_run.stdout
    flag = "--model" if module.endswith("hf_to_flax") else "--checkpoint"
    bad = subprocess.run(
        [sys.executable, "-m", module, flag, str(tmp_path / "absent"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and str(tmp_path / "absent") in bad.stderr


def file_digests(root) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: what an output must never change of its input."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def hf_source(tmp_path, hf_checkpoint):
    """`--model` of hf_to_flax: a saved HF checkpoint folder."""
    return hf_checkpoint(name="inputs.npy/source")[1], "--model"


def run_source(tmp_path, hf_checkpoint):
    """`--checkpoint` of flax_to_hf: a training workdir whose newest step is the model (the issue's case)."""
    _, folder = hf_checkpoint(name="hf")
    run = tmp_path / "inputs.npy" / "source"
    hf_to_flax.convert(str(folder), run / "checkpoints" / "5")
    return run, "--checkpoint"


def hubert_source(tmp_path, hf_checkpoint):
    """`--model` of hubert_to_flax: a saved HF HuBERT folder."""
    folder = tmp_path / "inputs.npy" / "source"
    random_hubert().save_pretrained(folder)
    return folder, "--model"


def kmeans_source(tmp_path, hf_checkpoint):
    """`--kmeans` of kmeans_to_npy: a pickled scikit-learn k-means (named .npy, so that --out may name it)."""
    data = np.random.default_rng(0).standard_normal((200, 4))
    (tmp_path / "inputs.npy").mkdir()
    joblib.dump(KMeans(n_clusters=3, n_init=1, random_state=0).fit(data), tmp_path / "inputs.npy" / "source.npy")
    return tmp_path / "inputs.npy" / "source.npy", "--kmeans"


CONVERTERS = {
    "hf_to_flax": (hf_to_flax.main, hf_source, []),
    "flax_to_hf": (flax_to_hf.main, run_source, ["--format", "slamkit"]),
    "hubert_to_flax": (hubert_to_flax.main, hubert_source, []),
    "kmeans_to_npy": (kmeans_to_npy.main, kmeans_source, ["--allow-pickle"]),
}
# where --out points: the source itself, the folder holding it, a new folder inside it
PLACES = {"same": lambda source: source, "parent": lambda source: source.parent, "child": lambda s: s / "out.npy"}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("converter", CONVERTERS)
def test_overwrite_onto_the_source_is_refused_and_the_source_kept(capsys, hf_checkpoint, tmp_path, converter, place):
    main, make_source, flags = CONVERTERS[converter]
    source, flag = make_source(tmp_path, hf_checkpoint)
    inputs = tmp_path / "inputs.npy"
    before = file_digests(inputs)
    out = PLACES[place](source)
    capsys.readouterr()
    code = main([flag, str(source), "--out", str(out), "--overwrite", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {out}: the output "), lines
    assert str(source) in lines[0]
    assert file_digests(inputs) == before
    assert not [path for path in tmp_path.rglob(".*") if ".tmp-" in path.name], "a staging folder was left behind"


def test_an_out_that_links_to_the_source_is_refused(capsys, hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint()
    before = file_digests(folder)
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    code, err = run_convert(capsys, "--model", folder, "--out", tmp_path / "link", "--overwrite")
    assert code == 1 and "the output is the input" in err and len(err.strip().splitlines()) == 1
    assert file_digests(folder) == before


def test_atomic_dir_refuses_its_inputs_even_when_overwriting(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes(b"precious")
    for out in (source, tmp_path, source / "inside"):
        with pytest.raises(ValueError, match="the output (is|is inside|contains) the input"):
            with atomic_dir(out, overwrite=True, inputs=[source]):
                raise AssertionError("the block must not run")
    assert [path.name for path in tmp_path.iterdir()] == ["source"]
    assert (source / "data.bin").read_bytes() == b"precious"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_atomic_dir_gives_a_folder_the_permissions_of_mkdir(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "model") as staging:
            (staging / "weights.bin").write_bytes(b"x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o777 & ~umask  # what mkdir itself gives
