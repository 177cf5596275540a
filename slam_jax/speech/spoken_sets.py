"""`mode: synthesize`: the paper's synthetic spoken sets from text, TTS, then the tokeniser (docs/recipe.md §7).

    python -m slam_jax.main --config configs/stinystories.py --config.synth.text_path=TinyStories-train.txt
    python -m slam_jax.main --config configs/spokenswag.py --config.synth.text_path=swag/train.csv

sTinyStories: each story spoken by one of four voices, tokenised; out/units/features.jsonl feeds `prepare`.
SpokenSwag: per SWAG row, prompt = sent1, chosen = sent2 + the gold ending, rejected = sent2 + a seeded random
wrong ending, all three by the same voice; rows whose prompt + chosen text has Auto-BLEU-2 >= the threshold are
dropped; out/preference.jsonl feeds `preference.prepare` (DPO).

Output folder: tts/ (synthesize_corpus: audio/, manifest, skipped, report), units/ (the tokeniser's folder),
then preference.jsonl (SpokenSwag) and report.json. Every step is skipped when its output is already there, and
the TTS and tokeniser steps resume a killed run themselves. The text and the output folder may be in a bucket
(gs://, s3://).
"""

import csv
import dataclasses
import io
import json
import time
from collections.abc import Iterator

from ml_collections import ConfigDict

from slam_jax import paths
from slam_jax.data.preference import filter_score
from slam_jax.errors import DataError
from slam_jax.files import read_records, write_text
from slam_jax.paths import Path, absolute
from slam_jax.settings import Settings, setting
from slam_jax.speech import tokenize, tts
from slam_jax.speech.tokenize import TokenizeJob, TokenizeSettings

STORY_SEPARATOR = "<|endoftext|>"
PREFERENCE = "preference.jsonl"
REPORT = "report.json"
SWAG_ENDINGS = ("ending0", "ending1", "ending2", "ending3")
SWAG_COLUMNS = ("sent1", "sent2", *SWAG_ENDINGS, "label")
PARTS = ("prompt", "chosen", "rejected")
KINDS = ("stinystories", "spokenswag", "tts")


@dataclasses.dataclass(frozen=True)
class SynthSettings(Settings):
    """`synth`: which spoken set to build from which text, and how to speak it (configs/stinystories.py)."""

    kind: str = setting("stinystories", choices=KINDS)
    text_path: str = setting("", exists=True)
    out_path: str = ""
    backend: str = "espeak"
    voices: str = ""  # '' = tts.DEFAULT_VOICES
    num_workers: int = setting(2, minimum=0)  # 0 = speak in this process
    seed: int = 0
    max_chars: int = setting(10_000, above=0)
    auto_bleu_threshold: float = setting(0.3, minimum=0.0, maximum=1.0)  # 0 = off
    progress: bool = True

    def validate(self) -> None:
        # Voices and backend are checked here so that a typo stops the job before any text is read or spoken.
        try:
            tts.backend_factory(self.backend)
        except ValueError as error:
            raise ValueError(f"{self._source}.backend={self.backend!r}: {error}") from None
        if self.voices:
            try:
                tts.parse_voices(self.voices)
            except ValueError as error:
                raise ValueError(f"{self._source}.voices={self.voices!r}: {error}") from None

    def tts_options(self) -> dict:
        """The keyword arguments of the builders and `tts.synthesize_corpus`."""
        return _tts_options(
            self.backend, self.voices or tts.DEFAULT_VOICES, self.seed, self.num_workers, self.progress, self.max_chars
        )


@dataclasses.dataclass(frozen=True)
class SynthesizeJob(Settings):
    """A whole `mode: synthesize` config."""

    mode: str = setting("synthesize", choices=("synthesize",))
    seed: int = 0  # unused: the set's seed is `synth.seed` (voices, wrong endings and k-means fitting)
    synth: SynthSettings = SynthSettings()
    tokenize: TokenizeSettings = TokenizeSettings()

    def validate(self) -> None:
        if self.synth.kind != "tts":  # `tts` speaks only; the other kinds tokenise what they speak
            self.tokenize.check_files()


def read_stories(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(where, source id, text) per story of a jsonl (`text`, optional `id`) or a .txt (stories separated by
    `<|endoftext|>` lines, as the TinyStories release, or else one story per line); blank stories are dropped."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for where, record in read_records(path):
            if not isinstance(record.get("text"), str):
                raise DataError(f"{where}: key 'text' missing or not a string")
            yield where, str(record.get("id", "")), record["text"]
        return
    with paths.naming(path), path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if any(line.strip() == STORY_SEPARATOR for line in lines):
        yield from _separated_stories(path, lines)
        return
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield f"{path}:{number}", "", line.strip()


def _separated_stories(path: Path, lines: list[str]) -> Iterator[tuple[str, str, str]]:
    """Stories between `<|endoftext|>` lines, each named by the line it starts on; lines within a story join."""
    story, first = [], 1
    for number, line in enumerate([*lines, STORY_SEPARATOR], start=1):
        if line.strip() == STORY_SEPARATOR:
            text = " ".join(part.strip() for part in story if part.strip())
            if text:
                yield f"{path}:{first}", "", text
            story, first = [], number + 1
        else:
            story.append(line)


def story_rows(text_path: str | Path) -> list[dict]:
    """TTS rows `stories/<8-digit index>` of every story, with its source line and id for the record."""
    return [
        {"id": f"stories/{index:08d}", "text": text, "source": where, "source_id": source_id}
        for index, (where, source_id, text) in enumerate(read_stories(text_path))
    ]


def _synthesize_step(rows: list[dict], out: Path, options: dict) -> dict:
    """synthesize_corpus into out/tts, skipped when a finished report for the same number of rows is there."""
    report_path = out / "tts" / tts.REPORT
    if report_path.is_file() and json.loads(report_path.read_text()).get("rows") == len(rows):
        return json.loads(report_path.read_text())
    tts_rows = [{key: row[key] for key in ("id", "text", "voice") if key in row} for row in rows]
    return tts.synthesize_corpus(tts_rows, out / "tts", **options)


def _tokenize_step(out: Path, tokenize_settings: TokenizeSettings, seed: int) -> dict:
    """The tokeniser over out/tts/audio into out/units, skipped when its features.jsonl is there."""
    units_dir = out / "units"
    if (units_dir / tokenize.FEATURES).is_file() and (units_dir / tokenize.REPORT).is_file():
        return json.loads((units_dir / tokenize.REPORT).read_text())
    folders = {"data_path": str(absolute(out / "tts" / tts.AUDIO)), "out_path": str(absolute(units_dir))}
    return tokenize.tokenize(TokenizeJob(seed=seed, tokenize=tokenize_settings.replace(**folders)), out)


def _tts_options(backend, voices, seed, num_workers, progress, max_chars) -> dict:
    return dict(
        backend=backend, voices=voices, seed=seed, num_workers=num_workers, progress=progress, max_chars=max_chars
    )


def build_stinystories(
    text_path: str | Path,
    out_dir: str | Path,
    tokenize_settings: TokenizeSettings,
    backend: str = "espeak",
    voices: tuple[tts.Voice, ...] | str = tts.DEFAULT_VOICES,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    max_chars: int = 10_000,
) -> dict:
    """sTinyStories: stories -> out/tts (audio) -> out/units/features.jsonl; returns (and saves) the report."""
    start, out = time.perf_counter(), Path(out_dir)
    rows = story_rows(text_path)
    if not rows:
        raise DataError(f"{text_path}: no stories")
    write_text(out / "stories.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    tts_report = _synthesize_step(rows, out, _tts_options(backend, voices, seed, num_workers, progress, max_chars))
    units_report = _tokenize_step(out, tokenize_settings, seed)
    report = {
        "stories": len(rows),
        "tts": tts_report,
        "tokenize": units_report,
        "features": str(absolute(out / "units" / tokenize.FEATURES)),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def read_swag(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) of a SWAG csv (the HF `swag` "regular" columns) or jsonl with the same keys."""
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from read_records(path)
        return
    with paths.naming(path), path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            yield f"{path}:{reader.line_num}", record


def swag_texts(record: dict, where: str, index: int, seed: int) -> dict:
    """The prompt / chosen / rejected texts of one SWAG row; DataError naming `where` and the key if malformed."""
    missing = [key for key in SWAG_COLUMNS if record.get(key) is None]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    try:
        label = int(record["label"])
    except (TypeError, ValueError):
        raise DataError(f"{where}: column 'label' = {record['label']!r} is not an integer 0-3") from None
    if not 0 <= label < len(SWAG_ENDINGS):
        raise DataError(f"{where}: column 'label' = {label} is out of range 0-3")
    endings = [str(record[key]).strip() for key in SWAG_ENDINGS]
    wrong = [number for number in range(len(endings)) if number != label]
    rejected = wrong[tts.stable_index(f"swag/{index}/rejected", seed, len(wrong))]
    context = str(record["sent2"]).strip()
    return {
        "prompt": str(record["sent1"]).strip(),
        "chosen": _join(context, endings[label]),
        "rejected": _join(context, endings[rejected]),
    }


def _join(context: str, ending: str) -> str:
    """sent2 + " " + the ending, without a stray space when sent2 is empty."""
    return f"{context} {ending}" if context else ending


def swag_pairs(swag_path: str | Path, seed: int, threshold: float, voices: tuple[tts.Voice, ...]):
    """(kept pairs, count of rows dropped by Auto-BLEU-2): each pair has an id, a voice and the three texts."""
    kept, repetitive = [], 0
    for index, (where, record) in enumerate(read_swag(swag_path)):
        texts = swag_texts(record, where, index, seed)
        if threshold > 0 and filter_score(texts["prompt"], texts["chosen"]) >= threshold:
            repetitive += 1
            continue
        identifier = f"swag/{index:08d}"
        kept.append({"id": identifier, "voice": tts.choose_voice(identifier, seed, voices).spec, "texts": texts})
    return kept, repetitive


def _units_by_id(units_dir: Path, audio_dir: Path) -> dict[str, list[int]]:
    """The tokeniser's units keyed by TTS id (the wav's path under audio/, without .wav)."""
    audio_dir = absolute(audio_dir)
    result = {}
    for line in (units_dir / tokenize.FEATURES).read_text().splitlines():
        record = json.loads(line)
        result[absolute(record["file_name"]).relative_to(audio_dir).with_suffix("").as_posix()] = record["units"]
    return result


def preference_rows(pairs: list[dict], units: dict[str, list[int]]) -> tuple[list[dict], int]:
    """Rows of preference.jsonl for the pairs whose three parts all have units; and how many were dropped."""
    rows, dropped = [], 0
    for pair in pairs:
        parts = [units.get(f"{pair['id']}/{part}") for part in PARTS]
        if not all(parts):
            dropped += 1
            continue
        row = {"id": pair["id"], "voice": pair["voice"]}
        row.update({part: {"units": part_units} for part, part_units in zip(PARTS, parts, strict=True)})
        row.update({f"{part}_text": pair["texts"][part] for part in PARTS})
        rows.append(row)
    return rows, dropped


def build_spokenswag(
    swag_path: str | Path,
    out_dir: str | Path,
    tokenize_settings: TokenizeSettings,
    backend: str = "espeak",
    voices: tuple[tts.Voice, ...] | str = tts.DEFAULT_VOICES,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    max_chars: int = tts.DEFAULT_MAX_CHARS,
    auto_bleu_threshold: float = 0.3,
) -> dict:
    """SpokenSwag: SWAG rows -> Auto-BLEU filter -> out/tts -> out/units -> out/preference.jsonl; the report."""
    start, out = time.perf_counter(), Path(out_dir)
    voices = tts.parse_voices(voices) if isinstance(voices, str) else tuple(voices)
    pairs, repetitive = swag_pairs(swag_path, seed, auto_bleu_threshold, voices)
    if not pairs:
        raise DataError(f"{swag_path}: no SWAG rows left ({repetitive} dropped by Auto-BLEU-2)")
    rows = [
        {"id": f"{pair['id']}/{part}", "text": pair["texts"][part], "voice": pair["voice"]}
        for pair in pairs
        for part in PARTS
    ]
    tts_report = _synthesize_step(rows, out, _tts_options(backend, voices, seed, num_workers, progress, max_chars))
    units_report = _tokenize_step(out, tokenize_settings, seed)
    preference, missing = preference_rows(pairs, _units_by_id(out / "units", out / "tts" / tts.AUDIO))
    write_text(out / PREFERENCE, "".join(json.dumps(row) + "\n" for row in preference))
    report = {
        "swag_rows": len(pairs) + repetitive,
        "dropped_auto_bleu": repetitive,
        "dropped_no_audio_or_units": missing,
        "pairs": len(preference),
        "tts": tts_report,
        "tokenize": units_report,
        "preference": str(absolute(out / PREFERENCE)),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: synthesize`: the config checked into a `SynthesizeJob`, then `synthesize`."""
    return synthesize(SynthesizeJob.from_config(config, "config"), workdir)


def synthesize(job: SynthesizeJob, workdir: Path) -> dict:
    """Build the set named by `synth.kind` from `synth.text_path`: stinystories, spokenswag, or tts (rows
    `{"id", "text"}` spoken into OUT/audio/<id>.wav, no units: e.g. benchmark audio)."""
    synth = job.synth
    if not synth.text_path:
        raise ValueError("synth.text_path is empty: give the TinyStories text (.txt/.jsonl) or SWAG rows (.csv/.jsonl)")
    out = Path(synth.out_path or Path(workdir) / synth.kind)
    options = synth.tts_options()
    if synth.kind == "stinystories":
        report = build_stinystories(synth.text_path, out, job.tokenize, **options)
        print(f"sTinyStories: {report['stories']} stories -> {report['features']}")
    elif synth.kind == "spokenswag":
        report = build_spokenswag(
            synth.text_path, out, job.tokenize, auto_bleu_threshold=synth.auto_bleu_threshold, **options
        )
        print(f"SpokenSwag: {report['pairs']} pairs of {report['swag_rows']} rows -> {report['preference']}")
    else:  # "tts": the kinds are checked in SynthSettings
        report = tts.synthesize_corpus(synth.text_path, out, **options)
        print(f"TTS: {report['written'] + report['reused']} of {report['rows']} rows spoken -> {out / tts.AUDIO}")
    return report
