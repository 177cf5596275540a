"""Units -> audio: the MFCC tokeniser's inverse against scipy's DCT, librosa's inversion and the forward MFCC of its
own output; `load_vocoder`'s kinds and refusals; `mode: resynthesize` on espeak-ng speech end to end."""

import collections
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy
import soundfile
from scipy.signal import resample_poly
from sklearn.cluster import KMeans
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize

import slam_jax
from configs import resynthesize as resynthesize_config
from configs import tokenize_mfcc
from slam_jax.models import kmeans, vocoder
from slam_jax.speech import features, resynthesize, tokenize, vocoders
from slam_jax.speech.resynthesize import ResynthesizeJob, ResynthesizeSettings
from slam_jax.speech.tokenize import MfccSettings

CONFIG = features.SpectralConfig()
HOP = CONFIG.frame_samples
NUM_UNITS = 16
FEATURES = tokenize.FEATURES


def mfcc(samples: np.ndarray) -> np.ndarray:
    """The project's forward MFCC frames of one waveform."""
    return np.asarray(features.spectral_features(CONFIG, np.asarray(samples, np.float32)[None]))[0]


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    """Each sentence spoken by espeak-ng, resampled (by scipy) to 16 kHz."""
    return [
        resample_poly(synthesize(text).astype(np.float32) / 32768, 320, 441).astype(np.float32) for text in SENTENCES
    ]


@pytest.fixture(scope="module")
def fitted(waves) -> KMeans:
    """16 MFCC centroids fitted by scikit-learn on the sentences' frames."""
    return KMeans(NUM_UNITS, n_init=1, random_state=0).fit(np.concatenate([mfcc(wave) for wave in waves]))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """The sentences as espeak-ng's own 22,050 Hz wav files."""
    folder = tmp_path_factory.mktemp("speech")
    for index, sentence in enumerate(SENTENCES):
        soundfile.write(folder / f"s{index}.wav", synthesize(sentence).astype(np.float32) / 32768, ESPEAK_RATE)
    return folder


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory, speech) -> Path:
    """`mode: tokenize` with the MFCC encoder on the speech, fitting 16 centroids: tokenizer.json, centroids.npy,
    features.jsonl (deduplicated units with durations)."""
    workdir = tmp_path_factory.mktemp("tokenizer")
    config = tokenize_mfcc.get_config()
    config.tokenize.data_path, config.tokenize.out_path = str(speech), str(workdir / "units")
    config.tokenize.fit_units, config.tokenize.progress = NUM_UNITS, False
    tokenize.run(config, workdir)
    return workdir / "units"


def test_log_mel_is_scipys_inverse_dct_of_the_zero_padded_mfcc(fitted):
    centroids = fitted.cluster_centers_
    padded = np.pad(centroids, ((0, 0), (0, CONFIG.num_mels - CONFIG.num_mfcc)))
    expected = scipy.fft.idct(padded, type=2, norm="ortho", axis=-1)
    np.testing.assert_allclose(vocoders.log_mel_frames(centroids, CONFIG), expected, atol=1e-4)
    np.testing.assert_allclose(
        librosa.feature.inverse.mfcc_to_mel(centroids.T, n_mels=40, ref=1.0).T, 10 ** (expected / 10), rtol=1e-4
    )


def test_linear_power_gives_back_the_mel_bands_where_librosas_nnls_misses(fitted):
    log_mel = vocoders.log_mel_frames(fitted.cluster_centers_, CONFIG)
    mel_matrix = librosa.filters.mel(sr=16_000, n_fft=1024, n_mels=40).T.astype(np.float64)  # the same filters
    power = vocoders.linear_power(10 ** (log_mel / 10), features.mel_matrix(CONFIG))
    assert power.min() >= 0
    np.testing.assert_allclose(10 * np.log10(power @ mel_matrix), log_mel, atol=1e-3)
    librosa_power = librosa.util.nnls(mel_matrix.T, 10 ** (log_mel.T / 10)).T
    librosa_error = np.abs(10 * np.log10(np.maximum(librosa_power @ mel_matrix, 1e-30)) - log_mel).max()
    assert librosa_error > 1.0  # measured: 22.7 dB on these centroids


def test_stft_frames_as_the_forward_mfcc_and_istft_inverts_it(waves):
    samples = waves[0][: 40 * HOP].astype(np.float64)
    spectra = vocoders.stft(samples, 40, CONFIG)
    power_mel = np.abs(spectra) ** 2 @ librosa.filters.mel(sr=16_000, n_fft=1024, n_mels=40).T
    expected = scipy.fft.dct(10 * np.log10(np.maximum(power_mel, 1e-10)), type=2, norm="ortho", axis=-1)[:, :20]
    np.testing.assert_allclose(mfcc(samples), expected, atol=2e-3)
    np.testing.assert_allclose(vocoders.istft(spectra, CONFIG), samples, atol=1e-9)


def test_the_audio_of_units_has_their_centroids_mfcc_closer_than_librosas_inversion(waves, fitted):
    centroids = fitted.cluster_centers_.astype(np.float32)
    vocoder = vocoders.MfccInverseVocoder(centroids, CONFIG)
    labels = fitted.predict(mfcc(waves[1]))
    samples = vocoder.vocode(labels)
    assert samples.dtype == np.float32 and len(samples) == len(labels) * HOP
    frames = mfcc(samples)
    assert len(frames) == len(labels)
    error = np.sqrt(np.mean((frames - centroids[labels]) ** 2))
    assert error < 2.0  # measured: 1.43 dB RMS over the 20 coefficients (centroids >= 43 apart)
    assert np.mean(fitted.predict(frames) == labels) >= 0.95  # measured: every frame back to its unit
    # librosa's own inversion of the same MFCC frames (its nnls and Griffin-Lim, centred frames: shifted by half
    # a frame onto ours): measured 3.78 dB RMS
    theirs = librosa.feature.inverse.mfcc_to_audio(
        centroids[labels].T, n_mels=40, sr=16_000, n_fft=1024, hop_length=HOP, norm="ortho", lifter=0, n_iter=100
    )
    their_frames = mfcc(np.concatenate([np.zeros(HOP // 2, np.float32), theirs]))
    their_error = np.sqrt(np.mean((their_frames - centroids[labels][: len(their_frames)]) ** 2))
    assert error < their_error


def test_durations_are_each_units_mean_run_length(tmp_path):
    lines = [{"units": [3, 1, 3], "duration": [2, 1, 4]}, {"units": [1], "duration": [4]}, {"units": [2]}]
    (tmp_path / FEATURES).write_text("".join(json.dumps(line) + "\n" for line in lines))
    # unit 3: (2 + 4) / 2; unit 1: (1 + 4) / 2 = 2.5 -> 2 (to even); unit 2: no durations, 1; unit 0: unseen,
    # (2 + 1 + 4 + 4 + 1) / 5 = 2.4 -> 2
    assert vocoders.mean_durations(tmp_path / FEATURES, 5).tolist() == [2, 2, 1, 3, 2]
    vocoder = vocoders.MfccInverseVocoder(np.zeros((5, 20)) - 50, CONFIG, durations=np.array([2, 2, 1, 3, 2]))
    assert len(vocoder.vocode([3, 0, 2], predict_durations=True)) == (3 + 2 + 1) * HOP
    assert [len(wave) for wave in vocoder.vocode_batch([[3, 0, 2], [1]])] == [3 * HOP, HOP]


def test_load_vocoder_kinds_and_refusals(tmp_path, tokenizer_folder):
    from_folder = vocoders.load_vocoder(tokenizer_folder)
    centroids = np.load(tokenizer_folder / "centroids.npy")
    np.testing.assert_array_equal(from_folder.magnitudes, vocoders.MfccInverseVocoder(centroids, CONFIG).magnitudes)
    assert (from_folder.sample_rate, from_folder.hop_length, from_folder.num_units) == (16_000, HOP, NUM_UNITS)
    assert from_folder.durations.tolist() == hand_durations(tokenizer_folder)
    small = kmeans.save_centroids(tmp_path / "small.npy", centroids[:4])
    from_file = vocoders.load_vocoder(small, MfccSettings())
    assert from_file.num_units == 4 and from_file.durations is None
    assert from_folder.predicts_durations and not from_file.predicts_durations
    # the neural vocoder's checks and messages (slam_jax/models/vocoder.py)
    refusals = [
        (lambda: from_file.vocode([0, 9]), r"^units\[1\]=9: unit ids must be in 0\.\.3$"),
        (lambda: from_file.vocode_batch([[1], [4, -1]]), r"^units_list\[1\]\[0\]=4: unit ids must be in 0\.\.3$"),
        (lambda: from_file.vocode([]), r"^units: empty sequence"),
        (lambda: from_file.vocode([0.5, 1.0]), r"^units: expected integer unit ids"),
        (lambda: from_file.vocode([0, 1], predict_durations=True), r"^predict_durations: this vocoder has no duration"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=message):
            call()
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match=f"^{notes}: not a vocoder: "):
        vocoders.load_vocoder(notes)
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'absent'}: no such vocoder"):
        vocoders.load_vocoder(tmp_path / "absent")
    hubert_folder = tmp_path / "hubert_units"
    hubert_folder.mkdir()
    (hubert_folder / tokenize.DESCRIPTION).write_text(json.dumps({"encoder": "/models/mhubert_25hz", "mfcc": None}))
    with pytest.raises(ValueError, match=f"^{hubert_folder}: a tokeniser of the encoder '/models/mhubert_25hz'"):
        vocoders.load_vocoder(hubert_folder)


def test_any_other_folder_is_the_neural_vocoder_and_the_package_api_serves_both(tmp_path, tokenizer_folder):
    config = vocoder.VocoderConfig(
        num_embeddings=NUM_UNITS,
        embedding_dim=8,
        upsample_rates=(4, 2),
        upsample_kernel_sizes=(8, 4),
        upsample_initial_channel=16,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 2, 3),),
    )
    vocoder.save_vocoder(tmp_path / "hifigan", config, vocoder.get_params(vocoder.init_model(config)))
    neural = slam_jax.load_vocoder(tmp_path / "hifigan", batch_size=2)
    assert isinstance(neural, vocoder.Vocoder) and neural.batch_size == 2 and neural.hop_length == 8
    assert isinstance(slam_jax.load_vocoder(tokenizer_folder), vocoders.MfccInverseVocoder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'empty'}: not a converted vocoder"):
        slam_jax.load_vocoder(tmp_path / "empty")


def resynthesize_config_for(speech, tokenizer_folder, **resynth):
    config = resynthesize_config.get_config()
    config.resynthesize.data_path, config.resynthesize.vocoder = str(speech), str(tokenizer_folder)
    config.resynthesize.progress = False
    config.tokenize.encoder_path, config.tokenize.kmeans_path = "mfcc", str(tokenizer_folder / "centroids.npy")
    config.tokenize.progress = False
    for key, value in resynth.items():
        config.resynthesize[key] = value
    return config


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_units(record: dict) -> list[int]:
    return [unit for unit, count in zip(record["units"], record["duration"], strict=True) for _ in range(count)]


def test_resynthesis_keeps_every_frame_and_speaks_its_unit(tmp_path, speech, tokenizer_folder):
    summary = resynthesize.run(resynthesize_config_for(speech, tokenizer_folder), tmp_path)
    out = tmp_path / "resynthesize"
    lines = read_lines(out / resynthesize.LINES)
    assert summary["resynthesized"] == summary["files"] == len(SENTENCES) == len(lines)
    expected = {record["file_name"]: frame_units(record) for record in read_lines(tokenizer_folder / FEATURES)}
    centroids = np.load(tokenizer_folder / "centroids.npy")
    for index, line in enumerate(lines):
        source = speech / f"s{index}.wav"
        assert line["file_name"] == str(source) and line["wav"] == f"s{index}.wav"
        samples, rate = soundfile.read(out / line["wav"], dtype="float32")
        assert rate == 16_000 and soundfile.info(out / line["wav"]).subtype == "PCM_16"
        frames = len(resample_poly(soundfile.read(source)[0], 320, 441)) // HOP  # the input's 25 Hz frames
        assert line["units"] == frames == len(expected[str(source)])
        assert len(samples) == frames * HOP and line["output_seconds"] == round(frames * HOP / 16_000, 3)
        assert line["input_seconds"] == round(soundfile.info(source).duration, 3)
        heard = np.argmin(((mfcc(samples)[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        assert np.mean(heard == np.array(expected[str(source)])) >= 0.9  # the written audio, re-tokenised


def hand_durations(folder: Path) -> list[int]:
    """Each unit's mean run length in the tokeniser's features.jsonl, rounded (every unit occurs there)."""
    runs = collections.defaultdict(list)
    for record in read_lines(folder / FEATURES):
        for unit, count in zip(record["units"], record["duration"], strict=True):
            runs[unit].append(count)
    return [max(1, round(float(np.mean(runs[unit])))) for unit in range(NUM_UNITS)]


def test_deduplicated_units_last_their_mean_duration(tmp_path, speech, tokenizer_folder):
    config = resynthesize_config_for(speech, tokenizer_folder, num_files=2)
    config.tokenize.dedup = True
    summary = resynthesize.run(config, tmp_path)
    assert summary["predict_durations"] and summary["resynthesized"] == 2
    records = {record["file_name"]: record for record in read_lines(tokenizer_folder / FEATURES)}
    durations = hand_durations(tokenizer_folder)
    for line in read_lines(tmp_path / "resynthesize" / resynthesize.LINES):
        units = records[line["file_name"]]["units"]
        assert line["units"] == len(units)
        frames = sum(durations[unit] for unit in units)
        assert soundfile.info(tmp_path / "resynthesize" / line["wav"]).frames == frames * HOP


def test_a_unit_the_vocoder_lacks_names_the_file_and_keeps_the_lines_written(tmp_path, speech, tokenizer_folder):
    units = {Path(record["file_name"]).name: frame_units(record) for record in read_lines(tokenizer_folder / FEATURES)}
    spoken, lacked, unit = next(  # a unit one file has and another lacks
        (first, second, unit)
        for first in sorted(units)
        for second in sorted(units)
        for unit in units[second]
        if unit not in units[first]
    )
    # The same centroids with `unit` moved last: the tokeniser gives it id K - 1, and a vocoder of the first K - 1
    # speaks `spoken` whole but not `lacked`.
    centroids = np.load(tokenizer_folder / "centroids.npy")
    order = [index for index in range(len(centroids)) if index != unit] + [unit]
    relabelled = kmeans.save_centroids(tmp_path / "relabelled.npy", centroids[order])
    smaller = kmeans.save_centroids(tmp_path / "smaller.npy", centroids[order][:-1])
    files = f"{speech / spoken},{speech / lacked}"
    config = resynthesize_config_for(files, tokenizer_folder, vocoder=str(smaller))
    config.tokenize.kmeans_path = str(relabelled)
    with pytest.raises(ValueError) as caught:
        resynthesize.run(config, tmp_path)
    last = len(centroids) - 1
    assert str(caught.value) == (
        f"resynthesize.vocoder='{smaller}': {speech / lacked}: units[{units[lacked].index(unit)}]={last}: unit ids "
        f"must be in 0..{last - 1}"
    )
    assert [line["wav"] for line in read_lines(tmp_path / "resynthesize" / resynthesize.LINES)] == [spoken]
    assert (tmp_path / "resynthesize" / spoken).is_file() and not (tmp_path / "resynthesize" / lacked).exists()


def test_bad_inputs_are_one_line_errors(tmp_path, speech, tokenizer_folder):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match=f"^{notes}: not a vocoder"):
        resynthesize.run(resynthesize_config_for(speech, tokenizer_folder, vocoder=str(notes)), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^config\.resynthesize\.vocoder='absent': no such file"):
        resynthesize.run(resynthesize_config_for(speech, tokenizer_folder, vocoder="absent"), tmp_path)
    dedup = resynthesize_config_for(speech, tokenizer_folder, vocoder=str(tokenizer_folder / "centroids.npy"))
    dedup.tokenize.dedup = True
    with pytest.raises(
        ValueError, match=r"^tokenize\.dedup=True: the vocoder .*centroids\.npy has no duration predictor"
    ):
        resynthesize.run(dedup, tmp_path)
    with pytest.raises(ValueError, match=r"holds input audio"):
        resynthesize.run(resynthesize_config_for(speech, tokenizer_folder, out_path=str(speech)), tmp_path)
    twins = tmp_path / "twins"
    twins.mkdir()
    for suffix in (".wav", ".flac"):
        soundfile.write(twins / f"a{suffix}", np.zeros(16_000, np.float32), 16_000)
    with pytest.raises(ValueError, match=r"a\.flac and .*a\.wav would both be resynthesised as a\.wav"):
        resynthesize.run(resynthesize_config_for(twins, tokenizer_folder), tmp_path)


def test_the_config_loads_into_its_job_with_its_defaults():
    config = resynthesize_config.get_config()
    job = ResynthesizeJob.from_config(
        {**config.to_dict(), "tokenize": {**config.tokenize.to_dict(), "encoder_path": "mfcc", "kmeans_path": ""}},
        "config",
    )
    assert job.mode == "resynthesize" and not job.tokenize.dedup
    assert ResynthesizeSettings().to_dict() == config.resynthesize.to_dict()
    bad = {**config.to_dict(), "resynthesize": {**config.resynthesize.to_dict(), "num_files": -1}}
    with pytest.raises(ValueError, match=r"^config\.resynthesize\.num_files=-1: must be >= 0$"):
        ResynthesizeJob.from_config(bad, "config")
