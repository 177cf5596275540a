"""k-means: assignment and fitting against scikit-learn; the .bin -> .npy conversion and its pickle guard."""

import jax
import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans

from conversion import kmeans_to_npy
from slam_jax.models import kmeans


def blobs(count: int, dim: int, num_blobs: int, seed: int) -> np.ndarray:
    """Overlapping Gaussian blobs: a realistic, not trivially separable, k-means problem."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((num_blobs, dim))
    return (centers[rng.integers(0, num_blobs, count)] + rng.standard_normal((count, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> tuple[np.ndarray, KMeans]:
    data = blobs(20_000, 32, 150, seed=0)
    return data, KMeans(n_clusters=100, n_init=1, max_iter=20, random_state=0).fit(data[:5000])


def test_assignment_equals_scikit_learn_predict(fitted):
    data, model = fitted
    expected = model.predict(data)
    agreement = np.mean(kmeans.predict(data, model.cluster_centers_, chunk=4096) == expected)
    assert agreement >= 0.999, agreement
    batched = jax.jit(kmeans.assign)(data.reshape(40, 500, 32), model.cluster_centers_.astype(np.float32))
    assert batched.shape == (40, 500) and batched.dtype == np.int32
    assert np.mean(np.asarray(batched).reshape(-1) == expected) >= 0.999


def test_inertia_equals_scikit_learn_score(fitted):
    data, model = fitted
    np.testing.assert_allclose(kmeans.inertia(data, model.cluster_centers_), -model.score(data), rtol=1e-4)


def test_fit_reaches_scikit_learn_inertia(fitted):
    data = fitted[0][:6000, :16]
    reference = KMeans(n_clusters=20, n_init=5, random_state=0).fit(data).inertia_
    centroids = kmeans.fit(data, 20, seed=0, num_init=5)
    assert centroids.shape == (20, 16) and centroids.dtype == np.float32
    assert kmeans.inertia(data, centroids) <= 1.02 * reference


def test_fit_rejects_too_few_frames():
    with pytest.raises(ValueError, match="k-means needs"):
        kmeans.fit(np.zeros((5, 3), np.float32), 10)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = kmeans_to_npy.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_kmeans_bin_converts_only_with_allow_pickle(capsys, tmp_path, fitted):
    _, model = fitted
    source, out = tmp_path / "km100.bin", tmp_path / "km100.npy"
    joblib.dump(model, source)
    code, _, err = run_cli(capsys, "--kmeans", source, "--out", out)
    assert_one_line_error(code, err, str(source), "pickle", "runs code", "--allow-pickle")
    assert not out.exists()

    code, stdout, _ = run_cli(capsys, "--kmeans", source, "--out", out, "--allow-pickle")
    assert code == 0 and "100 centroids of dimension 32" in stdout
    np.testing.assert_array_equal(np.load(out, allow_pickle=False), model.cluster_centers_.astype(np.float32))
    np.testing.assert_array_equal(kmeans.load_centroids(out), model.cluster_centers_.astype(np.float32))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["km100.bin", "km100.npy"]

    code, _, err = run_cli(capsys, "--kmeans", source, "--out", out, "--allow-pickle")
    assert_one_line_error(code, err, str(out), "already exists")


def test_kmeans_bin_bad_input_is_one_line_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--kmeans", tmp_path / "absent.bin", "--out", tmp_path / "x.npy", "--allow-pickle")
    assert_one_line_error(code, err, "absent.bin", "not found")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a pickle")
    code, _, err = run_cli(capsys, "--kmeans", garbage, "--out", tmp_path / "x.npy", "--allow-pickle")
    assert_one_line_error(code, err, str(garbage), "not a joblib/pickle k-means file")
    not_kmeans = tmp_path / "list.bin"
    joblib.dump([1, 2, 3], not_kmeans)
    code, _, err = run_cli(capsys, "--kmeans", not_kmeans, "--out", tmp_path / "x.npy", "--allow-pickle")
    assert_one_line_error(code, err, "holds a list, not a fitted k-means")
    assert not (tmp_path / "x.npy").exists()


def test_help_prints_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        kmeans_to_npy.main(["--help"])
    assert exit_info.value.code == 0
    assert "--allow-pickle" in capsys.readouterr().out


def test_centroid_loading_never_unpickles(tmp_path):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain .npy array"):
        kmeans.load_centroids(pickled)
    with pytest.raises(ValueError, match="kmeans_to_npy"):
        kmeans.load_centroids(tmp_path / "official.bin")
