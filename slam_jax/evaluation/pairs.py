"""Pair benchmarks: which two utterances make each pair, which one is the positive, and which subset it is in.

Layouts read (docs/recipe.md §6; the reference's file layouts):
- sBLIMP, sStoryCloze, tStoryCloze, sWUGGY: wav files named `<integer><separator>...` (separator `+` for sBLIMP,
  `_` for the others), in the folder itself and/or in its subfolders (one subset per subfolder, e.g. sBLIMP's
  phenomena). The two files of a pair share the integer; a layout where every integer is used once pairs
  integers 2k and 2k+1 instead.
- SALMon: one subfolder per part, files `sample_<index>_<option>.wav`; option 0 is the positive, option 1 the
  negative.
- A jsonl of pairs: one object per line with `positive` and `negative` (an audio path, relative to the jsonl's
  folder or absolute; a list of units; `{"units": [...]}`; or a `<UnN>...` string) and optional `subset`, `id`.

Which file of a pair is the positive is made explicit, never left to directory order: a name token from
POSITIVE_LABELS / NEGATIVE_LABELS (e.g. `correct` / `incorrect`, `word` / `nonword`) decides; if neither file
carries one, the file whose name sorts first is the positive. A pair that is not exactly one file of each kind
is an error naming its files.

A benchmark folder or pairs jsonl may be in a bucket (gs://, s3://): the folders are listed and the jsonl read
through `slam_jax.paths`, and a relative audio path in a jsonl in a bucket names an object beside it.
"""

import dataclasses
import json
import re
from collections import defaultdict

from slam_jax.errors import DataError
from slam_jax.paths import Path
from slam_jax.speech import audio

SALMON_PARTS = (
    "bg_alignment",
    "bg_all_consistency",
    "bg_domain_consistency",
    "gender_consistency",
    "rir_consistency",
    "sentiment_alignment",
    "sentiment_consistency",
    "speaker_consistency",
)
POSITIVE_LABELS = frozenset({"correct", "pos", "positive", "true", "good", "grammatical", "real", "word"})
NEGATIVE_LABELS = frozenset({"incorrect", "neg", "negative", "false", "bad", "ungrammatical", "fake", "nonword"})
_UNIT = re.compile(r"<Un(\d+)>")

Utterance = str | tuple[int, ...]  # an audio path, or units


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two utterances of which the model should find `positive` more likely; `subset` names its breakdown row."""

    pair_id: str
    positive: Utterance
    negative: Utterance
    subset: str = ""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a benchmark's files are laid out."""

    kind: str  # "folder" (integer-prefixed pairs) or "salmon"
    separator: str = "_"


LAYOUTS = {
    "sblimp": Layout("folder", "+"),
    "sstorycloze": Layout("folder", "_"),
    "tstorycloze": Layout("folder", "_"),
    "swuggy": Layout("folder", "_"),
    "salmon": Layout("salmon"),
}
ALIASES = {
    "ssc": "sstorycloze",
    "tsc": "tstorycloze",
    "storycloze": "sstorycloze",
    "gen_ppl": "genppl",
    "asr_perplexity": "genppl",
    "autobleu": "auto_bleu",
    "auto-bleu": "auto_bleu",
    "llm_as_judge": "llm_judge",  # slamkit's name
    "llm-judge": "llm_judge",
}


def canonical_metric(name: str) -> str:
    name = name.strip().lower()
    return ALIASES.get(name, name)


def read_benchmark(metric: str, data_path: str | Path, salmon_parts: str = "all") -> list[Pair]:
    """The pairs of `metric` at `data_path`: a pairs jsonl (any metric name) or the benchmark's folder layout."""
    path = Path(data_path)
    if path.suffix == ".jsonl":
        return read_pairs_jsonl(path)
    metric = canonical_metric(metric)
    if metric not in LAYOUTS:
        raise ValueError(f"eval.metric={metric!r}: not one of {sorted(LAYOUTS)} (or give a pairs .jsonl as data_path)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such benchmark folder for {metric}")
    layout = LAYOUTS[metric]
    if layout.kind == "salmon":
        return read_salmon(path, salmon_parts)
    return read_pair_folder(path, layout.separator)


def read_pair_folder(folder: Path, separator: str) -> list[Pair]:
    """Pairs from the audio files of `folder` (subset "") and of each subfolder (subset = its name), sorted."""
    pairs = []
    for subfolder in [folder] + sorted(child for child in folder.iterdir() if child.is_dir()):
        files = _audio_files(subfolder)
        if files:
            subset = "" if subfolder == folder else subfolder.name
            pairs += _pairs_by_integer(files, separator, subset)
    if not pairs:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(audio.AUDIO_SUFFIXES)}) here or in subfolders")
    return pairs


def read_salmon(folder: Path, parts: str = "all") -> list[Pair]:
    """SALMon's parts (comma list, or `all` for the eight), each a subset."""
    names = SALMON_PARTS if parts.strip() == "all" else tuple(p.strip().strip("/") for p in parts.split(",") if p)
    missing = [name for name in names if not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: SALMon part folder(s) missing: {', '.join(missing)}")
    pairs = []
    for name in names:
        groups: dict[int, dict[int, Path]] = defaultdict(dict)
        for path in _audio_files(folder / name):
            fields = path.stem.split("_")
            if len(fields) < 3 or not (fields[1].isdigit() and fields[2].isdigit()):
                raise DataError(f"{path}: not a SALMon file name (sample_<index>_<option>.wav)")
            groups[int(fields[1])][int(fields[2])] = path
        if not groups:
            raise FileNotFoundError(f"{folder / name}: no audio files")
        for index in sorted(groups):
            options = groups[index]
            if sorted(options) != [0, 1]:
                listed = ", ".join(str(options[key]) for key in sorted(options))
                raise DataError(
                    f"{folder / name}: sample {index} has options {sorted(options)} ({listed}); need 0 and 1"
                )
            pairs.append(Pair(f"{name}/{index}", str(options[0]), str(options[1]), name))
    return pairs


def read_pairs_jsonl(path: Path) -> list[Pair]:
    """Pairs from a jsonl file; a missing audio file is an error naming the line and the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or "positive" not in record or "negative" not in record:
            raise DataError(f"{where}: needs 'positive' and 'negative'")
        positive = _utterance(record["positive"], path.parent, f"{where}: positive")
        negative = _utterance(record["negative"], path.parent, f"{where}: negative")
        pair_id = str(record.get("id", number))
        pairs.append(Pair(pair_id, positive, negative, str(record.get("subset", ""))))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def _utterance(value, base: Path, where: str) -> Utterance:
    if isinstance(value, dict):
        if "units" not in value:
            raise DataError(f"{where}: an object needs 'units'")
        value = value["units"]
    if isinstance(value, str) and value.lstrip().startswith("<Un"):
        return tuple(int(unit) for unit in _UNIT.findall(value))
    if isinstance(value, str):
        file = Path(value) if Path(value).is_absolute() else base / value
        if not file.is_file():
            raise FileNotFoundError(f"{where} file {file} not found")
        return str(file)
    if isinstance(value, list) and all(isinstance(unit, int) and not isinstance(unit, bool) for unit in value):
        return tuple(value)
    raise DataError(f"{where}: expected an audio path, a list of units, {{'units': [...]}} or a <UnN> string")


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in audio.AUDIO_SUFFIXES)


def _pairs_by_integer(files: list[Path], separator: str, subset: str) -> list[Pair]:
    """Group by the integer before `separator`; two files per integer, or one per integer paired 2k with 2k+1."""
    by_number: dict[int, list[Path]] = defaultdict(list)
    for path in files:
        head = path.name.split(separator, 1)[0]
        if separator not in path.name or not head.isdigit():
            raise DataError(f"{path}: name does not start with an integer and '{separator}'")
        by_number[int(head)].append(path)
    numbers = sorted(by_number)
    sizes = {len(group) for group in by_number.values()}
    folder = files[0].parent
    if sizes == {1}:
        if len(numbers) % 2:
            raise DataError(f"{folder}: odd number of files ({len(numbers)}); {by_number[numbers[-1]][0]} has no pair")
        groups = [(numbers[i], by_number[numbers[i]] + by_number[numbers[i + 1]]) for i in range(0, len(numbers), 2)]
    else:
        for number in numbers:
            if len(by_number[number]) != 2:
                listed = ", ".join(path.name for path in by_number[number])
                raise DataError(f"{folder}: pair {number} has {len(by_number[number])} file(s) ({listed}); need 2")
        groups = [(number, by_number[number]) for number in numbers]
    prefix = f"{subset}/" if subset else ""
    return [Pair(f"{prefix}{number}", *_order(group, separator), subset) for number, group in groups]


def _order(group: list[Path], separator: str) -> tuple[str, str]:
    """(positive, negative) of a two-file pair, from name labels, or by name if neither file has one."""
    labels = [_label(path, separator) for path in group]
    if labels == [None, None]:
        first, second = sorted(group, key=lambda path: path.name)
        return str(first), str(second)
    if sorted(labels, key=str) != ["negative", "positive"]:
        raise DataError(
            f"{group[0].parent}: cannot tell the positive of {group[0].name} ({labels[0] or 'no label'}) and "
            f"{group[1].name} ({labels[1] or 'no label'}): need one {sorted(POSITIVE_LABELS)} and one "
            f"{sorted(NEGATIVE_LABELS)} name token"
        )
    positive = group[labels.index("positive")]
    negative = group[labels.index("negative")]
    return str(positive), str(negative)


def _label(path: Path, separator: str) -> str | None:
    words = {word.lower() for word in re.split(rf"[{re.escape(separator)}_\-.+\s]+", path.stem)}
    positive, negative = bool(words & POSITIVE_LABELS), bool(words & NEGATIVE_LABELS)
    if positive == negative:
        return None
    return "positive" if positive else "negative"
