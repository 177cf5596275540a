"""Pair scoring: log-likelihoods against transformers, batching/padding/bucketing invariance, accuracy with ties,
breakdown, and the `mode: eval` command end to end on a pairs jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import slam_jax
from configs import eval as eval_config
from conversion import hf_to_flax
from slam_jax import parallel, tokens
from slam_jax.errors import DataError
from slam_jax.evaluation import pair_metrics, scoring

ROOT = Path(__file__).resolve().parents[1]
NUM_UNITS = 20


def torch_mean_log_likelihood(hf_model, units: list[int]) -> float:
    """Minus transformers' mean cross-entropy of `[1, units + 2, 1]` with BOS as context only."""
    ids = torch.tensor([[1, *(np.asarray(units) + 2).tolist(), 1]])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, :-1].double()
    return -float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


@pytest.fixture
def converted(hf_checkpoint, tmp_path):
    """(transformers model, converted model dir) of a random 20-unit speech LM."""
    hf_model, folder = hf_checkpoint(vocab_size=NUM_UNITS + 2)
    hf_to_flax.convert(str(folder), tmp_path / "speech")
    return hf_model, tmp_path / "speech"


def random_units(rng, lengths) -> list[list[int]]:
    return [rng.integers(0, NUM_UNITS, n).tolist() for n in lengths]


def test_log_likelihoods_equal_transformers_mean_nll(converted):
    hf_model, path = converted
    model = slam_jax.load_model(path, compute_dtype="float32")
    units = random_units(np.random.default_rng(0), (3, 14, 0, 25, 9, 30, 1))
    scores = scoring.Scorer(model, batch_size=8)([tokens.unit_sequence(u) for u in units])
    expected = [torch_mean_log_likelihood(hf_model, u) for u in units]
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_batching_padding_sharding_and_order_change_no_score(converted):
    _, path = converted
    model = slam_jax.load_model(path, compute_dtype="float32")
    sequences = [tokens.unit_sequence(u) for u in random_units(np.random.default_rng(1), (2, 13, 29, 7, 20, 11))]
    one_at_a_time = scoring.Scorer(model, batch_size=1, mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    alone = np.array([one_at_a_time([sequence])[0] for sequence in sequences])
    sharded = scoring.Scorer(model, batch_size=8)
    together = sharded(sequences)
    reversed_order = sharded(sequences[::-1])[::-1]
    assert sharded.mesh.devices.size == 8 and together.shape == (6,)
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(reversed_order, alone, atol=1e-5, rtol=0)


def test_pack_fills_rows_best_fit_longest_first():
    # 31 opens a batch 32 wide, 22 its second row; 15 fits neither (room 1, 10): a new batch 16 wide, 13 its
    # second row; 9 goes where the room is least but enough (10 -> 1), 4 fits nowhere (rooms 1, 1, 1, 3): a third
    # batch; 2 goes to the room of 3.
    assert scoring.pack([4, 31, 22, 15, 13, 9, 2], rows=2) == [(32, [[1], [2, 5]]), (16, [[3], [4, 6]]), (16, [[0]])]
    assert scoring.pack([5, 5, 5], rows=4) == [(16, [[0, 1, 2]])]
    assert scoring.pack([], rows=4) == []


def test_packed_rows_score_each_sequence_as_alone(converted):
    _, path = converted
    model = slam_jax.load_model(path, compute_dtype="float32")
    lengths = (30, 1, 3, 2, 5, 0, 8, 4, 1, 6)
    sequences = [tokens.unit_sequence(u) for u in random_units(np.random.default_rng(2), lengths)]
    alone = np.array([model.log_likelihood([sequence])[0] for sequence in sequences])
    packed = scoring.Scorer(model, batch_size=1, mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    assert max(len(row) for _, (row,) in scoring.pack([len(s) for s in sequences], 1)) == 4  # of 5, 4, 3 and 3 tokens
    np.testing.assert_allclose(packed(sequences), alone, atol=1e-5, rtol=0)


def test_outcomes_ties_and_breakdown_by_hand():
    positive = np.array([-1.0, -2.0, -3.0, -0.5, -0.25])
    negative = np.array([-2.0, -1.0, -3.0, -0.5, -1.0])
    outcomes = scoring.outcomes(positive, negative)
    np.testing.assert_array_equal(outcomes, [1.0, 0.0, 0.5, 0.5, 1.0])
    assert scoring.breakdown(["a", "a", "b", "b", ""], outcomes) == {
        "a": {"accuracy": 0.5, "num_pairs": 2},
        "b": {"accuracy": 0.5, "num_pairs": 2},
    }


def test_eval_command_on_a_pairs_jsonl_with_known_answers(converted, tmp_path):
    """Answers known from transformers; identical utterances tie; the CLI writes the contract's files."""
    hf_model, path = converted
    rng = np.random.default_rng(2)
    lines, expected = [], []
    for subset, count in (("random", 5), ("same", 2)):
        for _ in range(count):
            first, second = random_units(rng, rng.integers(3, 20, 2))
            second = first if subset == "same" else second
            lines.append({"positive": first, "negative": second, "subset": subset})
            scores = torch_mean_log_likelihood(hf_model, first), torch_mean_log_likelihood(hf_model, second)
            expected.append(0.5 if subset == "same" else float(scores[0] > scores[1]))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "slam_jax.main", "--config", str(ROOT / "configs" / "eval.py")]
    command += [f"--config.eval.data_path={data}", f"--config.eval.model={path}", f"--workdir={workdir}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((workdir / "eval" / "tstorycloze.json").read_text())
    assert {"metric", "accuracy", "num_pairs", "model", "breakdown"} <= saved.keys()
    assert saved["metric"] == "tstorycloze" and saved["num_pairs"] == 7 and saved["num_skipped"] == 0
    assert saved["accuracy"] == pytest.approx(np.mean(expected))
    assert saved["breakdown"] == {
        "random": {"accuracy": pytest.approx(np.mean(expected[:5])), "num_pairs": 5},
        "same": {"accuracy": 0.5, "num_pairs": 2},
    }
    rows = [json.loads(line) for line in (workdir / "eval" / "tstorycloze_pairs.jsonl").read_text().splitlines()]
    assert [row["score"] for row in rows] == expected
    assert [row["positive"] for row in rows] == [line["positive"] for line in lines]
    assert "tstorycloze" in result.stdout and f"{100 * np.mean(expected):.2f}%" in result.stdout


def test_eval_config_errors_are_clear(converted, tmp_path):
    _, path = converted
    config = eval_config.get_config()
    with pytest.raises(ValueError, match="eval.model is empty"):
        config.eval.data_path = str(tmp_path / "x.jsonl")
        pair_metrics.run(config, tmp_path)
    config.eval.metric = "sblimp,tstorycloze"
    config.eval.model = str(path)
    with pytest.raises(ValueError, match=r"1 path\(s\) for 2 metric\(s\)"):
        pair_metrics.run(config, tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"positive": [3, NUM_UNITS], "negative": [1]}) + "\n")
    config.eval.metric, config.eval.data_path = "tstorycloze", str(data)
    with pytest.raises(DataError, match=rf"pair 1: its units go outside \[0, {NUM_UNITS}\)"):
        pair_metrics.run(config, tmp_path)
