"""Audio in: formats, channel mixing and resampling against analytic signals, the length cap, bad files, windows,
and finding files."""

import re
import time

import numpy as np
import pytest
import soundfile
from speech_fixtures import write_silent_wav

from slam_jax.speech import audio

TONE_HZ = 440.0


def tone(seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def assert_is_tone(samples: np.ndarray, amplitude: float, atol: float) -> None:
    """`samples` is the 16 kHz tone of `amplitude` (edges, where resampling filters ramp, are skipped)."""
    expected = tone(len(samples) / audio.SAMPLE_RATE, audio.SAMPLE_RATE, amplitude)
    middle = slice(200, len(samples) - 200)
    assert np.abs(samples[middle] - expected[middle]).max() <= atol


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 48_000])
def test_rates_are_resampled_to_16k(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.wav"
    soundfile.write(path, tone(1.5, rate), rate, subtype="FLOAT")
    result = audio.read_audio(str(path))
    assert result.samples.dtype == np.float32
    assert len(result.samples) == int(np.ceil(1.5 * audio.SAMPLE_RATE))
    assert result.source_seconds == pytest.approx(1.5) and not result.truncated
    assert_is_tone(result.samples, 0.5, atol=2e-3)


def test_six_channels_are_averaged(tmp_path):
    gains = np.array([1.0, 0.5, 0.0, -0.25, 0.75, 0.2], np.float32)
    path = tmp_path / "six.wav"
    soundfile.write(path, tone(1.0, 48_000)[:, None] * gains, 48_000, subtype="FLOAT")
    assert soundfile.info(path).channels == 6
    assert_is_tone(audio.read_audio(str(path)).samples, 0.5 * gains.mean(), atol=2e-3)


@pytest.mark.parametrize("suffix,atol", [(".flac", 1e-3), (".ogg", 0.08), (".mp3", 0.08)])
def test_compressed_formats(tmp_path, suffix, atol):
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, tone(1.0, 16_000), 16_000)
    samples = audio.read_audio(str(path)).samples
    assert abs(len(samples) - 16_000) <= 1152  # mp3 frames pad the end
    assert_is_tone(samples[:15_000], 0.5, atol=atol)


def test_length_cap_reads_only_the_start_of_a_two_hour_file(tmp_path):
    path = write_silent_wav(tmp_path / "two_hours.wav", 2 * 3600, 8_000)
    start = time.perf_counter()
    result = audio.read_audio(str(path), max_seconds=3.0)
    assert time.perf_counter() - start < 1.0
    assert len(result.samples) == 3 * audio.SAMPLE_RATE and result.truncated
    assert result.source_seconds == 7200.0
    assert audio.probe_seconds(str(path)) == 7200.0


def test_bad_files_raise_audio_errors_with_a_reason(tmp_path):
    soundfile.write(tmp_path / "good.flac", tone(2.0, 16_000), 16_000)
    flac = (tmp_path / "good.flac").read_bytes()
    cases = {
        "empty.wav": (b"", "empty file (0 bytes)"),
        "text.wav": (b"just some text, not audio\n" * 10, "Format not recognised"),
        "corrupt.flac": (flac[: len(flac) // 2], "not readable as audio"),
        "garbled.flac": (flac[:120] + bytes(range(256)) * 40, "not readable as audio"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(audio.AudioError, match=re.escape(reason)):
            audio.read_audio(str(tmp_path / name))
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(audio.AudioError, match="empty audio"):
        audio.read_audio(str(tmp_path / "zero.wav"))
    soundfile.write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.read_audio(str(tmp_path / "nan.wav"))


def test_windows_by_hand():
    # 25 Hz frames (640 samples); 1 s windows (25 frames) overlapping 0.16 s (4 frames): hop 21 frames.
    spans = audio.windows(40_000, 640, window_seconds=1.0, overlap_seconds=0.16)
    assert [(w.start, w.end) for w in spans] == [(0, 16_000), (13_440, 29_440), (26_880, 40_000)]
    # The overlap of windows 0/1 covers frames 21-24 and is split after frame 22 (21 + 4 / 2).
    assert [(w.keep_start, w.keep_end) for w in spans] == [(0, 23), (2, 23), (2, 20)]
    kept = [w.start // 640 + frame for w in spans for frame in range(w.keep_start, w.keep_end)]
    assert kept == list(range(40_000 // 640))


def test_windows_off_or_short_file_is_one_window():
    assert audio.windows(50_000, 640, 0.0, 0.0) == [audio.Window(0, 50_000, 0, 78)]
    assert audio.windows(16_000, 640, 1.0, 0.16) == [audio.Window(0, 16_000, 0, 25)]


def test_windows_reject_misaligned_sizes():
    with pytest.raises(ValueError, match="multiple of 640"):
        audio.windows(100_000, 640, window_seconds=1.01, overlap_seconds=0.16)
    with pytest.raises(ValueError, match="multiple of 1280"):
        audio.windows(100_000, 640, window_seconds=1.0, overlap_seconds=0.04)


def test_list_audio_folders_lists_and_globs(tmp_path):
    for name in ("b/2.flac", "a/1.wav", "a/skip.txt", "c/3.MP3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    expected = [str(tmp_path / name) for name in ("a/1.wav", "b/2.flac", "c/3.MP3")]
    assert audio.list_audio(str(tmp_path)) == expected
    (tmp_path / "files.txt").write_text("b/2.flac\n\n" + str(tmp_path / "a/1.wav") + "\n")
    assert audio.list_audio(str(tmp_path / "files.txt")) == [str(tmp_path / "b/2.flac"), str(tmp_path / "a/1.wav")]
    assert audio.list_audio(f"{tmp_path}/b/*.flac,{tmp_path}/a/1.wav,{tmp_path}/b/2.flac") == expected[1::-1]
    with pytest.raises(FileNotFoundError, match="no such audio folder"):
        audio.list_audio(str(tmp_path / "absent"))
