"""Audio -> units for evaluation and prompts, through the tokeniser (`mode: tokenize`), cached on disk.

Each tokeniser setting gets its own folder under the cache root, named by a digest of the settings. The
tokeniser writes its parts there per chunk of the file list and skips parts it has already written, so a
second metric, model or run over the same audio files reads their units instead of encoding them again.
A file whose content changes under the same path keeps its cached units: delete the folder to re-encode.
"""

import hashlib
import json

import jax

from slam_jax import parallel
from slam_jax.files import read_jsonl, write_text
from slam_jax.paths import Path, absolute
from slam_jax.speech import tokenize
from slam_jax.speech.tokenize import TokenizeJob, TokenizeSettings

_NOT_CACHE_KEYS = ("data_path", "out_path", "progress", "num_workers", "store", "valid_fraction")


def cache_folder(settings: TokenizeSettings, cache_root: str | Path) -> Path:
    """The cache folder of these tokeniser settings (those that can change units, and the shard size).

    The digest is over the same dict the `tokenize` config section gave before it became `TokenizeSettings`
    (its keys are the section's), so folders cached then are found again.
    """
    values = {key: value for key, value in settings.to_dict().items() if key not in _NOT_CACHE_KEYS}
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]
    encoder = Path(str(settings.encoder_path)).name or "encoder"
    return Path(cache_root) / f"{encoder}-{digest}"


def audio_units(
    settings: TokenizeSettings,
    paths: list[str],
    cache_root: str | Path,
    seed: int = 0,
    max_seconds: float = 0.0,
    alone: bool = False,
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Units of every file in `paths` ({absolute path: units}) and why each other file failed ({path: reason}).

    Files and `cache_root` may be local or in a bucket (gs://, s3://): a bucket file's key is its URL as given.

    `settings` is the job's `tokenize` section; `max_seconds` > 0 keeps only the start of each file (generation
    prompts). Every process of a multi-host job calls it (the hosts share the files out), unless `alone`: a step
    that one process runs for all tokenises every file itself.
    """
    parallel.maybe_initialize()  # before the first barrier: a no-op once the job has joined its hosts
    files = sorted({str(absolute(path)) for path in paths})
    if max_seconds > 0:
        settings = settings.replace(max_seconds=max_seconds)
    out = cache_folder(settings, cache_root)
    listing = out / "lists" / f"{hashlib.sha1(chr(10).join(files).encode()).hexdigest()[:16]}.txt"
    # A cache, so no training store; built (and its paths checked) before anything is written into the cache.
    job = TokenizeJob(seed=seed, tokenize=settings.replace(data_path=str(listing), out_path=str(out), store=False))
    if alone or jax.process_index() == 0:  # every process lists the same files; one writes them, the others wait
        write_text(listing, "".join(f"{file}\n" for file in files))
    if not alone:
        parallel.barrier("slam_jax: audio units listed")
    tokenize.tokenize(job, out, alone)
    found = {record["file_name"]: record["units"] for record in read_jsonl(out / tokenize.FEATURES)}
    reasons = {
        record["file_name"]: record["reason"] for record in read_jsonl(out / tokenize.ERRORS) if not record["tokenized"]
    }
    units = {file: found[file] for file in files if file in found}
    failed = {file: reasons.get(file, "not tokenised") for file in files if file not in found}
    return units, failed
