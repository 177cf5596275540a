"""sTinyStories and SpokenSwag builders end to end with the offline MFCC tokeniser (k-means fitted on the data):
story formats, SWAG texts and bad rows, the Auto-BLEU filter, units in range, resume, and both `prepare`s."""

import csv
import json
from pathlib import Path

import pytest

from configs import spokenswag as spokenswag_config
from configs import stinystories as stinystories_config
from slam_jax.data import ingest, preference
from slam_jax.errors import DataError
from slam_jax.speech import spoken_sets, tts
from slam_jax.speech.tokenize import TokenizeSettings

NUM_UNITS = 8
STORIES = [
    "Once upon a time, a little dog found a red ball.\nHe played with it all day.",
    "Tom and Sue went to the park. They saw a big tree and sat under it.",
    "The sun was hot, so the cat slept in the shade.",
]
SWAG_HEADER = ["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source"]
SWAG_HEADER += ["ending0", "ending1", "ending2", "ending3", "label"]
SWAG_ROWS = [
    ["v0", "0", "", "A man opens the door.", "He", "gold", "walks in.", "eats the door.", "flies away.", "sings.", "0"],
    ["v1", "1", "", "The girl picks up a pen.", "She", "gold", "drinks it.", "writes a note.", "runs.", "jumps.", "1"],
    ["v2", "2", "", "the cat sat the cat sat the cat sat", "the cat", "gold", "sat", "ran", "hid", "slept", "0"],
]


def mfcc_tokenize(config):
    """The config's `tokenize` keys set for the offline MFCC tokeniser with 8 centroids fitted on the data."""
    settings = config.tokenize
    settings.update(encoder_path="mfcc", kmeans_path="", fit_units=NUM_UNITS, fit_num_init=1, progress=False)
    settings.buckets_per_octave = 1
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_story_formats_endoftext_one_per_line_and_jsonl(tmp_path):
    separated = tmp_path / "stories.txt"
    separated.write_text("\n<|endoftext|>\n".join(STORIES) + "\n<|endoftext|>\n\n<|endoftext|>\n")
    assert [text for _, _, text in spoken_sets.read_stories(separated)] == [
        story.replace("\n", " ") for story in STORIES
    ]
    assert [where.rsplit(":", 1)[1] for where, _, _ in spoken_sets.read_stories(separated)] == ["1", "4", "6"]
    per_line = tmp_path / "lines.txt"
    per_line.write_text("first story.\n\nsecond story.\n")
    assert [text for _, _, text in spoken_sets.read_stories(per_line)] == ["first story.", "second story."]
    records = tmp_path / "stories.jsonl"
    records.write_text(json.dumps({"id": "x7", "text": "a story."}) + "\n" + json.dumps({"story": "no text"}) + "\n")
    with pytest.raises(DataError, match=r"stories.jsonl:2: key 'text'"):
        list(spoken_sets.read_stories(records))
    assert spoken_sets.story_rows(per_line)[1]["id"] == "stories/00000001"


def test_stinystories_builds_units_in_range_that_prepare_reads_and_resumes(tmp_path):
    text = tmp_path / "TinyStories.txt"
    text.write_text("\n<|endoftext|>\n".join(STORIES) + "\n")
    tokenize = TokenizeSettings.from_config(mfcc_tokenize(stinystories_config.get_config()).tokenize, "tokenize")
    out = tmp_path / "stinystories"
    report = spoken_sets.build_stinystories(text, out, tokenize, num_workers=0, progress=False)
    assert (report["stories"], report["tts"]["written"], report["tokenize"]["tokenized"]) == (3, 3, 3)
    features = read_jsonl(out / "units" / "features.jsonl")
    names = sorted(Path(line["file_name"]).relative_to(out / "tts" / "audio").as_posix() for line in features)
    assert names == ["stories/00000000.wav", "stories/00000001.wav", "stories/00000002.wav"]
    for line in features:
        assert line["units"] and all(0 <= unit < NUM_UNITS for unit in line["units"])
    voices = {line["voice"] for line in read_jsonl(out / "tts" / tts.MANIFEST)}
    assert voices <= {voice.spec for voice in tts.DEFAULT_VOICES}
    summary = ingest.prepare(str(out / "units" / "features.jsonl"), tmp_path / "store", NUM_UNITS, valid_fraction=0)
    assert summary["train_num_sequences"] == 3
    assert summary["train_num_tokens"] == sum(len(line["units"]) + 2 for line in features)
    before = (out / "units" / "features.jsonl").stat().st_mtime_ns
    again = spoken_sets.build_stinystories(text, out, tokenize, num_workers=0, progress=False)
    assert again["tts"] == report["tts"] and (out / "units" / "features.jsonl").stat().st_mtime_ns == before


def write_swag(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([SWAG_HEADER, *rows])
    return path


def test_swag_texts_pick_gold_and_a_seeded_wrong_ending_and_bad_rows_name_their_line(tmp_path):
    path = write_swag(tmp_path / "swag.csv", SWAG_ROWS)
    pairs, repetitive = spoken_sets.swag_pairs(path, 0, 0.3, tts.DEFAULT_VOICES)
    assert repetitive == 1 and [pair["id"] for pair in pairs] == ["swag/00000000", "swag/00000001"]
    assert [pair["texts"]["chosen"] for pair in pairs] == ["He walks in.", "She writes a note."]
    for pair, row in zip(pairs, SWAG_ROWS, strict=False):
        wrong = {f"{row[4]} {ending}" for number, ending in enumerate(row[6:10]) if number != int(row[10])}
        assert pair["texts"]["rejected"] in wrong and pair["texts"]["prompt"] == row[3]
    rejected = {
        spoken_sets.swag_pairs(path, seed, 0.3, tts.DEFAULT_VOICES)[0][0]["texts"]["rejected"] for seed in range(8)
    }
    assert len(rejected) > 1  # the wrong ending follows the seed
    no_sent2 = {"sent1": "A man sits.", "sent2": "", "label": 1} | {f"ending{i}": f"E{i}." for i in range(4)}
    texts = spoken_sets.swag_texts(no_sent2, "row", 0, 0)
    assert texts["chosen"] == "E1." and texts["rejected"] in {"E0.", "E2.", "E3."}
    for bad, message in [(["9"], "out of range"), ([""], "not an integer")]:
        write_swag(tmp_path / "bad.csv", [SWAG_ROWS[0], SWAG_ROWS[1][:10] + bad])
        with pytest.raises(DataError, match=rf"bad.csv:3: column 'label' = .*{message}"):
            spoken_sets.swag_pairs(tmp_path / "bad.csv", 0, 0.3, tts.DEFAULT_VOICES)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"sent1": "a", "sent2": "b", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing column\(s\) \['ending0'"):
        spoken_sets.swag_pairs(tmp_path / "bad.jsonl", 0, 0.3, tts.DEFAULT_VOICES)


def test_the_repetitive_row_scores_above_the_threshold_by_hand():
    words = "the cat sat the cat sat the cat sat the cat sat".split()
    bigrams = list(zip(words, words[1:], strict=False))
    repeated = sum(bigrams.count(gram) > 1 for gram in bigrams) / len(bigrams)
    assert repeated == 1.0 and preference.filter_score(" ".join(words), "") == repeated


def test_spokenswag_mode_writes_pairs_that_preference_prepare_accepts(tmp_path):
    config = mfcc_tokenize(spokenswag_config.get_config())
    config.synth.update(text_path=str(write_swag(tmp_path / "swag.csv", SWAG_ROWS)), num_workers=0, progress=False)
    report = spoken_sets.run(config, tmp_path)
    out = tmp_path / "spokenswag"
    assert (report["swag_rows"], report["dropped_auto_bleu"], report["pairs"]) == (3, 1, 2)
    assert report["tts"]["written"] == 6 and report["tokenize"]["tokenized"] == 6
    rows = read_jsonl(out / "preference.jsonl")
    assert [row["chosen_text"] for row in rows] == ["He walks in.", "She writes a note."]
    manifest = {line["id"]: line["voice"] for line in read_jsonl(out / "tts" / tts.MANIFEST)}
    for row in rows:
        assert {manifest[f"{row['id']}/{part}"] for part in spoken_sets.PARTS} == {row["voice"]}
        for part in spoken_sets.PARTS:
            assert row[part]["units"] and all(0 <= unit < NUM_UNITS for unit in row[part]["units"])
    limits = preference.Limits(max_prompt_length=512, max_completion_length=512)
    manifest = preference.prepare(str(out / "preference.jsonl"), tmp_path / "pairs", NUM_UNITS, limits)
    assert manifest["num_pairs"] == 2 and manifest["skipped"] == {}
    config.synth.kind = "nonsense"
    with pytest.raises(ValueError, match=r"config\.synth\.kind='nonsense': not one of"):
        spoken_sets.run(config, tmp_path)


def test_pairs_missing_any_part_are_dropped_and_counted():
    pairs = [
        {"id": f"swag/{index}", "voice": "en-us:175:50", "texts": dict.fromkeys(spoken_sets.PARTS, "t")}
        for index in range(3)
    ]
    units = {f"swag/{index}/{part}": [1, 2] for index in range(3) for part in spoken_sets.PARTS}
    del units["swag/1/rejected"]
    units["swag/2/prompt"] = []
    rows, dropped = spoken_sets.preference_rows(pairs, units)
    assert [row["id"] for row in rows] == ["swag/0"] and dropped == 2
