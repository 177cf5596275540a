"""TTS: bit-identical espeak output across instances, processes and orders, 16 kHz against scipy's resampler,
voices and rates, text checks (batch counts and single-call errors), resume, id errors and the backend registry."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from slam_jax.errors import DataError
from slam_jax.speech import tts

SENTENCE = "The quick brown fox jumps over the lazy dog."
ROWS = [
    {"id": "a/one", "text": SENTENCE},
    {"id": "a/two", "text": "Seven small boats sailed slowly across the quiet bay.", "voice": "en-us+m3:150:30"},
    {"id": "three", "text": "Hello world."},
]


def wav_bytes(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*.wav"))}


def test_same_text_and_voice_are_bit_identical_across_instances_orders_and_processes(tmp_path):
    voice = tts.Voice("en-gb-x-rp+f3", 165, 60)  # breath noise and echo: the stateful parts of espeak
    first, second = tts.EspeakBackend(), tts.EspeakBackend()
    reference = first.synthesize(SENTENCE, voice)
    second.synthesize("Something else entirely, to move espeak's internal counters on!", tts.Voice("en-us+m3"))
    assert np.array_equal(second.synthesize(SENTENCE, voice), reference)
    in_process = tts.synthesize_corpus(ROWS, tmp_path / "here", num_workers=0, progress=False)
    spawned = tts.synthesize_corpus(ROWS[::-1], tmp_path / "spawned", num_workers=1, progress=False)
    assert in_process["written"] == spawned["written"] == 3
    assert wav_bytes(tmp_path / "here") == wav_bytes(tmp_path / "spawned")


def test_output_is_16_khz_mono_pcm_and_matches_scipy_resampling_of_the_native_audio(tmp_path):
    voice = tts.DEFAULT_VOICES[0]
    native = tts.EspeakBackend().synthesize(SENTENCE, voice)
    samples = tts.synthesize(SENTENCE, voice)
    expected = resample_poly(native, 320, 441)
    assert samples.dtype == np.float32 and abs(len(samples) - len(expected)) <= 1
    size = min(len(samples), len(expected))
    assert np.corrcoef(samples[:size], expected[:size])[0, 1] > 0.999
    tts.synthesize_corpus(ROWS[:1], tmp_path, num_workers=0, progress=False)
    info = soundfile.info(str(tmp_path / "audio" / "a" / "one.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16_000, 1, "PCM_16", len(samples))


def test_voices_differ_and_rate_sets_the_duration():
    voices = [tts.synthesize(SENTENCE, voice) for voice in tts.DEFAULT_VOICES]
    digests = {hashlib.sha256(samples.tobytes()).hexdigest() for samples in voices}
    assert len(digests) == len(tts.DEFAULT_VOICES)
    slow = tts.synthesize(SENTENCE, tts.Voice("en-us", rate=120))
    fast = tts.synthesize(SENTENCE, tts.Voice("en-us", rate=240))
    assert len(fast) < 0.65 * len(slow)  # twice the words per minute: about half the time (pauses scale less)


def test_voice_specs_parse_and_bad_ones_fail_in_one_line():
    assert tts.parse_voices("en-us:175:50, en-gb-x-rp+f3:160:65,en+m3") == (
        tts.Voice("en-us", 175, 50),
        tts.Voice("en-gb-x-rp+f3", 160, 65),
        tts.Voice("en+m3", 175, 50),
    )
    assert tts.parse_voice(tts.Voice("en+f4", 160, 70).spec) == tts.Voice("en+f4", 160, 70)
    for spec, message in [
        ("en:fast", "integers"),
        ("en:175:50:1", "name"),
        ("en:900", "rate"),
        ("en:175:101", "pitch"),
    ]:
        with pytest.raises(ValueError, match=message):
            tts.parse_voice(spec)
    with pytest.raises(ValueError, match="no voice 'xx-nonexistent'"):
        tts.synthesize(SENTENCE, tts.Voice("xx-nonexistent"))


def test_voice_choice_is_a_sha256_hash_of_seed_and_id():
    for identifier in ("stories/00000007", "swag/00000001"):
        by_hand = int.from_bytes(hashlib.sha256(f"3\0{identifier}".encode()).digest()[:8], "little") % 4
        assert tts.choose_voice(identifier, 3, tts.DEFAULT_VOICES) == tts.DEFAULT_VOICES[by_hand]


def test_bad_texts_are_counted_with_reasons_in_batch_and_refused_in_one_line_alone(tmp_path):
    rows = [
        {"id": "empty", "text": ""},
        {"id": "blank", "text": " \n\t "},
        {"id": "long", "text": "word " * 1000},
        {"id": "japanese", "text": "日本語"},
        {"id": "mixed", "text": "Café “naïve” 日本 — it still speaks."},
    ]
    report = tts.synthesize_corpus(rows, tmp_path, num_workers=0, progress=False)
    assert report["skipped"] == {"empty_text": 2, "no_speakable_text": 1, "too_long": 1}
    assert (report["written"], report["skipped_total"]) == (1, 4)
    skipped = [json.loads(line) for line in (tmp_path / tts.SKIPPED).read_text().splitlines()]
    assert [(row["id"], row["line"]) for row in skipped] == [("empty", 1), ("blank", 2), ("long", 3), ("japanese", 4)]
    manifest = [json.loads(line) for line in (tmp_path / tts.MANIFEST).read_text().splitlines()]
    assert [row["id"] for row in manifest] == ["mixed"] and manifest[0]["text"] == rows[4]["text"]
    assert tts.speakable_text(rows[4]["text"]) == ('Cafe "naive" - it still speaks.', "")
    for text, message in [("", "empty text"), ("word " * 1000, "too long"), ("日本語", "no speakable text")]:
        with pytest.raises(ValueError, match=message):
            tts.synthesize(text)


def test_resume_reuses_files_redoes_a_deleted_one_and_keeps_the_manifest(tmp_path):
    first = tts.synthesize_corpus(ROWS, tmp_path, num_workers=0, progress=False)
    manifest, audio = (tmp_path / tts.MANIFEST).read_bytes(), wav_bytes(tmp_path)
    again = tts.synthesize_corpus(ROWS, tmp_path, num_workers=0, progress=False)
    assert (first["written"], again["written"], again["reused"]) == (3, 0, 3)
    (tmp_path / "audio" / "a" / "two.wav").unlink()
    (tmp_path / "audio" / "a" / ".one.wav.tmp-123").write_bytes(b"half a write")
    third = tts.synthesize_corpus(ROWS, tmp_path, num_workers=0, progress=False)
    assert (third["written"], third["reused"]) == (1, 2)
    assert (tmp_path / tts.MANIFEST).read_bytes() == manifest
    assert wav_bytes(tmp_path) == audio and not list(tmp_path.rglob("*.tmp-*"))
    report = json.loads((tmp_path / tts.REPORT).read_text())
    assert report["audio_seconds"] == pytest.approx(
        sum(json.loads(line)["seconds"] for line in manifest.splitlines()), abs=1e-3
    )


@pytest.mark.parametrize(
    "bad_id, message",
    [("../escape", "'..'"), ("/absolute", "relative"), ("a//b", "empty"), ("", "non-empty"), (7, "non-empty")],
)
def test_a_bad_id_names_the_jsonl_line(tmp_path, bad_id, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"id": bad_id, "text": "hi"}) + "\n")
    with pytest.raises(DataError, match=rf"rows.jsonl:3: .*{message}"):
        tts.synthesize_corpus(path, tmp_path / "out", num_workers=0, progress=False)
    assert not (tmp_path / "out" / tts.MANIFEST).exists()


def test_duplicate_ids_name_both_lines_and_bad_rows_name_theirs(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [ROWS[0], ROWS[1], ROWS[0]]))
    with pytest.raises(DataError, match=r"rows.jsonl:3: duplicate id 'a/one' \(first at .*rows.jsonl:1\)"):
        tts.synthesize_corpus(path, tmp_path / "out", num_workers=0, progress=False)
    with pytest.raises(DataError, match=r"row 2: key 'voice': .*rate"):
        tts.synthesize_corpus([ROWS[0], {"id": "x", "text": "hi", "voice": "en:5"}], tmp_path / "out", num_workers=0)
    with pytest.raises(DataError, match=r"row 1: key 'text' must be a string"):
        tts.synthesize_corpus([{"id": "x"}], tmp_path / "out", num_workers=0)


class ToneBackend:
    """A stand-in engine at 8 kHz: 100 ms of a 440 Hz tone per character."""

    name = "tone"
    sample_rate = 8_000

    def synthesize(self, text: str, voice: tts.Voice) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(len(text) * 800) / 8_000)).astype(np.float32)


def test_registered_backends_plug_in_and_are_resampled_to_16_khz(tmp_path):
    tts.register_backend("tone", ToneBackend)
    report = tts.synthesize_corpus([{"id": "x", "text": "abcde"}], tmp_path, backend="tone", num_workers=0)
    assert report["audio_seconds"] == pytest.approx(0.5)
    samples, rate = soundfile.read(str(tmp_path / "audio" / "x.wav"))
    assert rate == 16_000 and len(samples) == 8_000
    with pytest.raises(ValueError, match="'nope' is not one of"):
        tts.synthesize_corpus(ROWS, tmp_path, backend="nope")
