"""Convert the official scikit-learn k-means `.bin` (a joblib pickle) to a plain `.npy` of centroids.

    python -m conversion.kmeans_to_npy --kmeans FILE.bin --out FILE.npy --allow-pickle

A pickle runs code while it loads, so the `.bin` is only opened with `--allow-pickle`: pass it for a file
from a source you trust (e.g. mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin from the textless-lib
release). The output is `cluster_centers_` as float32 [num_units, dim], written atomically; slam_jax only
ever reads that `.npy`, with pickles disabled. Either file may be a bucket URL (gs://, s3://): the `.bin` is read
from a local copy, the `.npy` written in one upload.
"""

import argparse
import sys
import warnings

import numpy as np

from conversion import command
from slam_jax import paths
from slam_jax.files import refuse_overlap
from slam_jax.models import kmeans
from slam_jax.paths import Path

PICKLE_REFUSAL = (
    "a scikit-learn .bin is a pickle, and loading a pickle runs code from the file; "
    "pass --allow-pickle if you trust its source"
)


def read_centroids(path: str | Path, allow_pickle: bool) -> np.ndarray:
    """`cluster_centers_` of the k-means model pickled (with joblib) in `path`, as float32."""
    path = Path(path)
    if not path.is_file():
        paths.check_bucket(path)
        raise FileNotFoundError(f"{path}: file not found")
    if not allow_pickle:
        raise PermissionError(f"{path}: {PICKLE_REFUSAL}")
    import joblib  # scikit-learn's dependency, needed only for this one-off import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn version-mismatch warnings of old pickles
            model = joblib.load(paths.local_copy(path))
    except Exception as error:  # noqa: BLE001 - any unpickling failure becomes one line naming the file
        raise ValueError(f"{path}: not a joblib/pickle k-means file ({type(error).__name__}: {error})") from None
    centroids = getattr(model, "cluster_centers_", None)
    if centroids is None or np.ndim(centroids) != 2:
        raise ValueError(f"{path}: holds a {type(model).__name__}, not a fitted k-means (no 2-D cluster_centers_)")
    return np.asarray(centroids, np.float32)


def convert(source: str | Path, out: str | Path, allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Write the centroids of the k-means in `source` to the `.npy` file `out`."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"{out}: the output must be a .npy file")
    refuse_overlap(out, [source])
    paths.check_bucket(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    return kmeans.save_centroids(out, read_centroids(source, allow_pickle))  # in a bucket: one upload


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.kmeans_to_npy",
        description="Convert a scikit-learn k-means .bin (joblib pickle) to a .npy of centroids.",
    )
    parser.add_argument("--kmeans", required=True, help="the scikit-learn k-means file (.bin, joblib pickle)")
    parser.add_argument("--out", required=True, help="output .npy file of float32 centroids [num_units, dim]")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow unpickling --kmeans (a pickle runs code: trusted files only)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return command.finish(
        lambda: convert(args.kmeans, args.out, allow_pickle=args.allow_pickle, overwrite=args.overwrite),
        summary,
        timed=False,
    )


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the number and the dimension of the centroids."""
    centroids = kmeans.load_centroids(out)
    return f": {centroids.shape[0]} centroids of dimension {centroids.shape[1]}"


if __name__ == "__main__":
    sys.exit(main())
