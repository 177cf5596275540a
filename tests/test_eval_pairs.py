"""Pair readers on fixture folders laid out like the real benchmarks, and their errors on bad layouts."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from slam_jax.errors import DataError
from slam_jax.evaluation import pairs
from slam_jax.evaluation.pairs import SALMON_PARTS, Pair


def wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * 16_000), np.float32), 16_000)
    return path


def names(pair: Pair) -> tuple[str, str]:
    return Path(pair.positive).name, Path(pair.negative).name


def test_sblimp_subfolders_are_subsets_and_labels_pick_the_positive(tmp_path):
    root = tmp_path / "sblimp"
    for phenomenon in ("subject_verb_agreement", "anaphor_agreement"):
        for number in (10, 2):  # numeric, not lexicographic, order: 2 before 10
            wav(root / phenomenon / f"{number}+incorrect+{phenomenon[:3]}.wav")
            wav(root / phenomenon / f"{number}+correct+{phenomenon[:3]}.wav")
    result = pairs.read_benchmark("sblimp", root)
    assert [pair.pair_id for pair in result] == [
        "anaphor_agreement/2",
        "anaphor_agreement/10",
        "subject_verb_agreement/2",
        "subject_verb_agreement/10",
    ]
    assert [pair.subset for pair in result] == ["anaphor_agreement"] * 2 + ["subject_verb_agreement"] * 2
    assert all(
        names(pair)
        == (
            f"{pair.pair_id.split('/')[1]}+correct+{pair.subset[:3]}.wav",
            f"{pair.pair_id.split('/')[1]}+incorrect+{pair.subset[:3]}.wav",
        )
        for pair in result
    )


def test_swuggy_word_is_the_positive_although_nonword_sorts_first(tmp_path):
    root = tmp_path / "swuggy"
    wav(root / "0_word_brick.wav")
    wav(root / "0_nonword_brock.wav")
    wav(root / "1_nonword_plind.wav")
    wav(root / "1_word_blind.wav")
    result = pairs.read_benchmark("swuggy", root)
    assert [names(pair) for pair in result] == [
        ("0_word_brick.wav", "0_nonword_brock.wav"),
        ("1_word_blind.wav", "1_nonword_plind.wav"),
    ]
    assert [pair.subset for pair in result] == ["", ""]


def test_storycloze_without_labels_orders_by_name_and_single_integers_pair_up(tmp_path):
    shared = tmp_path / "tsc"
    wav(shared / "0_b.wav")
    wav(shared / "0_a.wav")
    assert [names(pair) for pair in pairs.read_benchmark("tsc", shared)] == [("0_a.wav", "0_b.wav")]
    consecutive = tmp_path / "ssc"
    for number in range(4):
        wav(consecutive / f"{number}_utterance.wav")
    result = pairs.read_benchmark("sstorycloze", consecutive)
    assert [names(pair) for pair in result] == [
        ("0_utterance.wav", "1_utterance.wav"),
        ("2_utterance.wav", "3_utterance.wav"),
    ]


def test_salmon_parts_are_subsets_option_0_is_the_positive(tmp_path):
    root = tmp_path / "salmon"
    for part in SALMON_PARTS:
        for index in (1, 0):
            wav(root / part / f"sample_{index}_1.wav")
            wav(root / part / f"sample_{index}_0.wav")
    result = pairs.read_benchmark("salmon", root)
    assert len(result) == 16
    assert sorted({pair.subset for pair in result}) == sorted(SALMON_PARTS)
    assert all(
        names(pair) == (f"sample_{pair.pair_id[-1]}_0.wav", f"sample_{pair.pair_id[-1]}_1.wav") for pair in result
    )
    chosen = pairs.read_benchmark("salmon", root, salmon_parts="gender_consistency, rir_consistency/")
    assert [pair.pair_id for pair in chosen] == [
        "gender_consistency/0",
        "gender_consistency/1",
        "rir_consistency/0",
        "rir_consistency/1",
    ]


def test_salmon_missing_part_and_lonely_option_are_errors(tmp_path):
    root = tmp_path / "salmon"
    wav(root / "speaker_consistency" / "sample_0_0.wav")
    with pytest.raises(FileNotFoundError, match="bg_alignment"):
        pairs.read_benchmark("salmon", root)
    with pytest.raises(DataError, match=r"sample 0 has options \[0\].*sample_0_0.wav"):
        pairs.read_benchmark("salmon", root, salmon_parts="speaker_consistency")


def test_pairs_jsonl_paths_units_and_strings(tmp_path):
    wav(tmp_path / "audio" / "good.wav")
    wav(tmp_path / "audio" / "bad.wav")
    lines = [
        {"positive": "audio/good.wav", "negative": str(tmp_path / "audio" / "bad.wav"), "subset": "files"},
        {"positive": [3, 4, 5], "negative": {"units": [5, 4]}, "id": "units"},
        {"positive": "<Un7><Un8>", "negative": {"units": "<Un8><Un7>"}},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    result = pairs.read_benchmark("anything", path)
    assert result == [
        Pair("1", str(tmp_path / "audio" / "good.wav"), str(tmp_path / "audio" / "bad.wav"), "files"),
        Pair("units", (3, 4, 5), (5, 4), ""),
        Pair("3", (7, 8), (8, 7), ""),
    ]


def test_pair_with_a_missing_file_names_it(tmp_path):
    wav(tmp_path / "here.wav")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"positive": "here.wav", "negative": "gone.wav"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"pairs.jsonl:1: negative file .*gone.wav not found"):
        pairs.read_benchmark("tstorycloze", path)


def test_odd_number_of_files_names_the_file_without_a_partner(tmp_path):
    folder = tmp_path / "tsc"
    wav(folder / "0_correct.wav")
    wav(folder / "0_incorrect.wav")
    wav(folder / "1_correct.wav")
    with pytest.raises(DataError, match=r"pair 1 has 1 file\(s\) \(1_correct.wav\); need 2"):
        pairs.read_benchmark("tstorycloze", folder)
    consecutive = tmp_path / "consecutive"
    for number in range(3):
        wav(consecutive / f"{number}_x.wav")
    with pytest.raises(DataError, match=r"odd number of files \(3\); .*2_x.wav has no pair"):
        pairs.read_benchmark("tstorycloze", consecutive)


def test_unclear_roles_and_bad_names_are_errors(tmp_path):
    twins = tmp_path / "twins"
    wav(twins / "0_correct_a.wav")
    wav(twins / "0_correct_b.wav")
    with pytest.raises(DataError, match="cannot tell the positive of 0_correct_a.wav"):
        pairs.read_benchmark("sstorycloze", twins)
    unnamed = tmp_path / "unnamed"
    wav(unnamed / "story.wav")
    with pytest.raises(DataError, match=r"story.wav: name does not start with an integer and '\+'"):
        pairs.read_benchmark("sblimp", unnamed)
    with pytest.raises(ValueError, match="eval.metric='nope'"):
        pairs.read_benchmark("nope", unnamed)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        pairs.read_benchmark("swuggy", tmp_path / "empty")
