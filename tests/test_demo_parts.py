"""The demo's parts on their own: the text generator, the pipeline's stage handling and the report."""

import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from slam_jax import pipeline
from slam_jax.demo import report, text


def test_text_is_deterministic_and_benchmarks_are_held_out():
    stories = text.corpus(300, seed=0)
    assert stories == text.corpus(300, seed=0) and stories != text.corpus(300, seed=1)
    seen = {row["text"] for row in stories}
    bench = text.benchmarks(50, seed=0, exclude=seen)
    assert {name: len(rows) for name, rows in bench.items()} == {"tstorycloze": 100, "sblimp": 100, "swuggy": 100}
    correct = [row["text"] for row in bench["tstorycloze"] if row["id"].endswith("_correct")]
    assert not seen & set(correct)
    ids = [row["id"] for rows in bench.values() for row in rows]
    assert len(set(ids)) == len(ids)


def test_tstorycloze_pairs_share_the_story_and_differ_in_a_foreign_ending():
    rows = text.benchmarks(30, seed=3, exclude=set())["tstorycloze"]
    for correct, wrong in zip(rows[::2], rows[1::2], strict=True):
        assert correct["id"].split("_")[0] == wrong["id"].split("_")[0]
        body, ending = correct["text"].rsplit(". ", 1)
        wrong_body, wrong_ending = wrong["text"].rsplit(". ", 1)
        assert body == wrong_body and ending != wrong_ending
        topic_words = {word for topic in text.TOPICS.values() for word in topic.nouns}
        hero_noun = [word.strip(".") for word in ending.split() if word.strip(".") in topic_words]
        assert hero_noun and hero_noun[0] in body  # the fitting ending names the story's own creature


def test_scrambled_and_non_words():
    rng = np.random.default_rng(0)
    sentence = "the wet boat sailed near the crab"
    for _ in range(20):
        mixed = text.scrambled(sentence, rng)
        assert sorted(mixed.split()) == sorted(sentence.split()) and mixed != sentence
    known = set(text.vocabulary())
    for word in text.vocabulary():
        fake = text.non_word(word, rng, known)
        assert len(fake) == len(word) and fake not in known and fake.isalpha()
    ending = "Tom and the boat sailed together."
    for count, changed in ((1, 1), (2, 2), (5, 3)):  # three content words: Tom, boat, sailed
        wrong = text.misspelt(ending, rng, known, count)
        pairs = [(a, b) for a, b in zip(wrong.split(), ending.split(), strict=True) if a != b]
        assert len(pairs) == changed and all(b.strip(".").lower() in known for _, b in pairs)
        assert wrong.endswith("together.") and wrong.split()[0][0].isupper()


def changed(ending: str, chosen: str) -> list[tuple[str, str]]:
    """(new, old) word pairs where `ending` differs from `chosen` word by word (none if the lengths differ)."""
    if len(ending.split()) != len(chosen.split()):
        return []
    return [(a, b) for a, b in zip(ending.split(), chosen.split(), strict=True) if a != b]


def test_swag_rows_label_the_storys_own_ending():
    for row in text.swag_rows(20, seed=0):
        chosen = row[f"ending{row['label']}"]
        hero = row["sent1"].split()[0]
        assert chosen.startswith(hero + " ")
        wrong = [row[f"ending{i}"] for i in range(4) if i != row["label"]]
        assert len(set(wrong)) == 3 and chosen not in wrong
        scrambles = [ending for ending in wrong if sorted(ending[:-1].split()) == sorted(chosen[:-1].split())]
        assert len(scrambles) == 1  # one wrong ending is the right one's words out of order
        known = set(text.vocabulary())
        misspelt = [
            ending
            for ending in wrong
            if ending not in scrambles and any(a.strip(".").lower() not in known for a, _ in changed(ending, chosen))
        ]
        assert len(misspelt) == 1  # one has MISSPELT_WORDS words changed, into non-words of the same length
        assert len(changed(misspelt[0], chosen)) == text.MISSPELT_WORDS
        for new_word, old_word in changed(misspelt[0], chosen):
            assert new_word.strip(".").lower() not in known and len(new_word) == len(old_word)
            assert old_word.strip(".").lower() in known
        off_topic = [ending for ending in wrong if ending not in scrambles + misspelt]
        assert len(off_topic) == 1 and off_topic[0].split()[0] in text.NAMES


def test_text_mode_writes_three_files(tmp_path):
    config = ConfigDict({"seed": 0, "text": {"num_stories": 12, "num_preference_rows": 5, "num_benchmark_pairs": 4}})
    counts = text.run(config, tmp_path)
    assert counts == {text.STORIES: 12, text.SWAG: 5, text.BENCHMARKS: 24}
    lines = (tmp_path / text.STORIES).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines][:2] == ["corpus/000000", "corpus/000001"]


def test_pipeline_substitutes_workdir_and_checks_stages(tmp_path):
    config = ConfigDict(
        {"a": {"mode": "report", "x": "{workdir}/in,{workdir}/b", "n": 3, "nested": {"y": "{workdir}"}}}
    )
    resolved = pipeline.with_workdir(config.a, tmp_path)
    assert resolved.x == f"{tmp_path}/in,{tmp_path}/b" and resolved.n == 3 and resolved.nested.y == str(tmp_path)
    assert config.a.x == "{workdir}/in,{workdir}/b"  # the original is untouched
    stages = {"a": {"mode": "report"}, "report": {}}  # a section without a mode runs the job its name names
    job, sections = pipeline.parse(ConfigDict({"pipeline": {"stages": "a, report"}, **stages}))
    assert job.pipeline.names() == ["a", "report"] and sorted(sections) == ["a", "report"]
    with pytest.raises(ValueError, match="stage 'missing' has no config section"):
        pipeline.parse(ConfigDict({"pipeline": {"stages": "a,missing"}, "a": {"mode": "report"}}))
    with pytest.raises(ValueError, match="cannot nest"):
        pipeline.parse(ConfigDict({"pipeline": {"stages": "a"}, "a": {"mode": "pipeline"}}))
    with pytest.raises(ValueError, match=r"config\.a\.mode='bogus' is not one of"):
        pipeline.parse(ConfigDict({"pipeline": {"stages": "a"}, "a": {"mode": "bogus"}}))
    with pytest.raises(ValueError, match=r"config: unknown keys \['stage'\]"):
        pipeline.parse(ConfigDict({"pipeline": {"stages": "a"}, "a": {"mode": "report"}, "stage": "a"}))


def _eval_file(folder, metric, accuracy, pairs=200):
    """An eval run's two files for `metric`: `accuracy` over `pairs` pairs, the first ones right."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"metric": metric, "accuracy": accuracy, "num_pairs": pairs, "model": "m", "breakdown": {}}
    (folder / f"{metric}.json").write_text(json.dumps(record))
    right = round(accuracy * pairs)
    scores = [{"id": str(i), "score": float(i < right)} for i in range(pairs)]
    (folder / f"{metric}_pairs.jsonl").write_text("".join(json.dumps(score) + "\n" for score in scores))


def test_report_numbers_come_from_the_evaluation_files(tmp_path, capsys):
    _eval_file(tmp_path / "before", "tstorycloze", 0.825)
    _eval_file(tmp_path / "before", "swuggy", 0.6)
    _eval_file(tmp_path / "after", "tstorycloze", 0.9)
    _eval_file(tmp_path / "after", "swuggy", 0.575)
    rows = [{"step": 10, "loss": 4.0}, {"step": 20, "loss": 3.0}, {"step": 20, "validation_loss": 3.5}]
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dpo_rows = [{"step": 5, "loss": 0.69, "tokens_seen": 4096, "reward_accuracy": 0.5, "reward_margin": 0.0}]
    dpo_rows += [{"step": 10, "loss": 0.25, "tokens_seen": 8192, "reward_accuracy": 0.875, "reward_margin": 0.25}]
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dpo_rows))
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / pipeline.DONE).write_text(json.dumps({"stage_seconds": 12.5}))
    settings = {
        "title": "T",
        "before": str(tmp_path / "before"),
        "after": str(tmp_path / "after"),
        "pretrain": str(tmp_path / "pretrain"),
        "dpo": str(tmp_path / "dpo"),
        "pipeline_dir": str(tmp_path),
        "out_path": str(tmp_path / "report.md"),
        "commands": "python -m slam_jax.main --config configs/demo.py",
    }
    result = report.run(ConfigDict({"report": settings}), tmp_path / "report")
    markdown = (tmp_path / "report.md").read_text()
    # pairs 115-119 went wrong: p = 2 x 0.5^5; 15 went right: p = 2 x 0.5^15
    assert "| swuggy | 50% | 60.0% | 57.5% | -2.5 | 5 / 0 | 0.062 | 200 |" in markdown
    assert "| tstorycloze | 50% | 82.5% | 90.0% | +7.5 | 0 / 15 | 6.1e-05 | 200 |" in markdown
    assert [row["p_value"] for row in result["metrics"]] == [2 * 0.5**5, 2 * 0.5**15]
    assert "| pretrain | 20 | 4.000 | 3.000 | 3.500 |" in markdown and "| stage | 12.5 |" in markdown
    assert (
        "| dpo | 10 | 0.690 | 0.250 | - | 8,192 tokens seen, reward_accuracy 0.875, reward_margin 0.250 |" in markdown
    )
    assert "python -m slam_jax.main --config configs/demo.py" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["metrics"] == result["metrics"]
    for plot in ("metrics.png", "training.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(report/{plot})" in markdown
    assert "| tstorycloze | 50% | 82.5% | 90.0% | +7.5 | 0 / 15 | 6.1e-05 | 200 |" in capsys.readouterr().out


def test_mcnemar_p_by_hand():
    assert report.mcnemar_p(0, 0) == 1.0
    assert report.mcnemar_p(5, 4) == 1.0  # 2 x (1 + 9 + 36 + 84 + 126) / 512, capped at 1
    assert report.mcnemar_p(4, 15) == pytest.approx(2 * (1 + 19 + 171 + 969 + 3876) / 2**19)  # 0.0192
    assert report.mcnemar_p(13, 1) == report.mcnemar_p(1, 13) == pytest.approx(2 * 15 / 2**14)  # 0.00183
    assert report.mcnemar_p(3, 1) == pytest.approx(2 * 5 / 16)


def test_report_without_results_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evaluation results folder"):
        report.read_evaluations(tmp_path / "nothing")


def test_report_links_the_generated_audio_relative_to_itself(tmp_path):
    _eval_file(tmp_path / "after", "tstorycloze", 0.75)
    generate = tmp_path / "speak" / "generate"
    generate.mkdir(parents=True)
    records = [
        {"file_name": f"/data/tstorycloze/{index}_correct.wav", "prompt_units": [1, 2, 3], "units": [4] * index}
        | {"wav_full": f"audio/{index:04d}_full.wav", "wav_continuation": f"audio/{index:04d}_continuation.wav"}
        for index in range(2)
    ]
    (generate / "generations.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    settings = {"after": str(tmp_path / "after"), "listen": str(generate), "out_path": str(tmp_path / "report.md")}
    result = report.run(ConfigDict({"report": settings}), tmp_path / "report")
    markdown = (tmp_path / "report.md").read_text()
    assert "## Listen" in markdown
    assert (
        "| 1_correct.wav | [0001_full.wav](speak/generate/audio/0001_full.wav)"
        " | [0001_continuation.wav](speak/generate/audio/0001_continuation.wav) | 3 + 1 |"
    ) in markdown
    assert "| 0_correct.wav |" in markdown and "| 3 + 0 |" in markdown
    assert result["listen"][0]["wav_continuation"] == "speak/generate/audio/0000_continuation.wav"
    assert json.loads((tmp_path / "report.json").read_text())["listen"] == result["listen"]


def test_report_refuses_generations_without_audio(tmp_path):
    _eval_file(tmp_path / "after", "tstorycloze", 0.75)
    (tmp_path / "generate").mkdir()
    record = {"file_name": "a.wav", "prompt_units": [1], "units": [2]}
    (tmp_path / "generate" / "generations.jsonl").write_text(json.dumps(record) + "\n")
    settings = {"after": str(tmp_path / "after"), "listen": str(tmp_path / "generate"), "out_path": "r.md"}
    with pytest.raises(ValueError, match=r"generations\.jsonl:1: names no wav files \(run generate with generate\."):
        report.run(ConfigDict({"report": settings}), tmp_path / "report")
