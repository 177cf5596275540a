"""Preference rows naming audio files: tokenised through the configured tokeniser, then prepared as units."""

import json
import re

import numpy as np
import pytest
import soundfile

from configs import slam_dpo
from slam_jax.data import preference
from slam_jax.errors import DataError
from slam_jax.speech import preference_audio, tts
from slam_jax.speech.audio_units import audio_units
from slam_jax.speech.tokenize import TokenizeSettings

NUM_UNITS = 8
TEXTS = {
    "p0": "The boat sailed across the quiet bay.",
    "c0": "Then the sailor waved at the crab.",
    "r0": "Then the cow mooed in the barn.",
    "p1": "Lily went to the forest.",
    "c1": "She saw a tall green tree.",
    "r1": "The rocket orbited the silver moon.",
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "audio").mkdir()
    for name, text in TEXTS.items():
        samples = tts.synthesize(text, tts.DEFAULT_VOICES[0])
        soundfile.write(folder / "audio" / f"{name}.wav", samples, 16_000)
    lines = [
        {"prompt": "audio/p0.wav", "chosen": "audio/c0.wav", "rejected": str(folder / "audio" / "r0.wav")},
        {"prompt": {"units": [1, 2, 3]}, "chosen": "<Un4><Un5>", "rejected": [6, 7]},
        {"prompt": "audio/p1.wav", "chosen": "audio/c1.wav", "rejected": "audio/r1.wav", "chosen_text": "x"},
        {"prompt": "audio/p1.wav", "chosen": "audio/missing.wav", "rejected": "audio/r1.wav"},
    ]
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, path


def settings() -> TokenizeSettings:
    """configs/slam_dpo.py's tokeniser, as the DPO job turns it into settings, set for MFCC fitted on the data."""
    tokenize = slam_dpo.get_config().tokenize
    tokenize.update(encoder_path="mfcc", kmeans_path="", fit_units=NUM_UNITS, fit_num_init=1, progress=False)
    return TokenizeSettings.from_config(tokenize, "tokenize")


def test_audio_fields_become_the_tokenisers_units(rows, tmp_path):
    folder, path = rows
    resolved = preference_audio.resolve(str(path), settings(), tmp_path, tmp_path / "cache")
    lines = [json.loads(line) for line in open(resolved)]
    files = sorted(str(file) for file in (folder / "audio").glob("*.wav"))
    expected, failed = audio_units(settings(), files, tmp_path / "cache")  # the same cache: read back, not re-run
    assert not failed and len(expected) == 6
    audio = folder / "audio"
    assert lines[0]["prompt"] == {"units": expected[str(audio / "p0.wav")]}
    assert lines[0]["rejected"] == {"units": expected[str(audio / "r0.wav")]}
    assert lines[2]["chosen"] == {"units": expected[str(audio / "c1.wav")]} and lines[2]["chosen_text"] == "x"
    assert lines[1] == {**json.loads(path.read_text().splitlines()[1]), preference.ORIGIN: f"{path}:2"}  # as they were
    assert lines[3]["chosen"] == {  # left for prepare to report
        preference.AUDIO_ERROR: f"audio file 'audio/missing.wav' ({folder / 'audio' / 'missing.wav'}): no such file"
    }
    assert all(0 <= unit < NUM_UNITS for line in lines[:1] for unit in line["chosen"]["units"])

    limits = preference.Limits(64, 64, bad_rows="skip")
    manifest = preference.prepare(resolved, tmp_path / "store", NUM_UNITS, limits)
    assert manifest["num_pairs"] == 3 and sum(manifest["skipped"].values()) == 1
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4 \[chosen\]: audio file 'audio/missing.wav'"):
        preference.prepare(resolved, tmp_path / "store2", NUM_UNITS, preference.Limits(64, 64))


def test_rows_of_units_only_are_used_as_they_are(tmp_path):
    path = tmp_path / "units.jsonl"
    path.write_text(json.dumps({"prompt": [1], "chosen": [2], "rejected": [3]}) + "\n")
    assert preference_audio.resolve(str(path), settings(), tmp_path, tmp_path / "cache") == str(path)
    assert preference_audio.audio_path("<Un3>", tmp_path) is None and preference_audio.audio_path([1], tmp_path) is None
    assert preference_audio.audio_path("a.wav", tmp_path) == tmp_path / "a.wav"
    assert np.array_equal(preference.field_units({"units": [1, 2]}, "x", 8), [1, 2])
