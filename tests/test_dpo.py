"""DPO: the objective against TRL's formulas, pair data, reference log-probs, learning, resume, pipeline."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from ml_collections import ConfigDict

from configs import pretrain_synthetic, slam_dpo
from slam_jax import tokens
from slam_jax.data import preference
from slam_jax.errors import DataError
from slam_jax.models import config as model_config
from slam_jax.models import qwen2, storage
from slam_jax.training import dpo, dpo_loss, loop
from slam_jax.training import dpo as dpo_module
from slam_jax.training.step import TrainState

sequence_logps = jax.jit(dpo_module.sequence_logps, static_argnums=2)


def trl_sigmoid_loss(pc, pr, rc, rr, beta, label_smoothing):
    """TRL DPOTrainer.dpo_loss, loss_type='sigmoid', written out in torch."""
    logits = (pc - pr) - (rc - rr)
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_sigmoid_loss_gradient_and_rewards_equal_trl(label_smoothing):
    rng = np.random.default_rng(0)
    logps = [rng.normal(-50, 10, 16).astype(np.float64) for _ in range(4)]
    torch_inputs = [torch.tensor(x, requires_grad=i < 2) for i, x in enumerate(logps)]
    losses, chosen, rejected = trl_sigmoid_loss(*torch_inputs, beta=0.1, label_smoothing=label_smoothing)
    losses.mean().backward()

    jax.config.update("jax_enable_x64", True)
    try:

        def mean_loss(pc, pr):
            return dpo_loss(pc, pr, logps[2], logps[3], beta=0.1, label_smoothing=label_smoothing)[0].mean()

        ours = dpo_loss(*logps, beta=0.1, label_smoothing=label_smoothing)
        grads = jax.grad(mean_loss, argnums=(0, 1))(logps[0], logps[1])
    finally:
        jax.config.update("jax_enable_x64", False)
    for got, want in zip(ours, (losses, chosen, rejected), strict=True):
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(grads[0], torch_inputs[0].grad.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(grads[1], torch_inputs[1].grad.numpy(), atol=1e-6, rtol=0)


def test_beta_appears_once_and_ipo():
    pc, pr, rc, rr = (
        jnp.array([-3.0, -7.0]),
        jnp.array([-5.0, -2.0]),
        jnp.array([-4.0, -4.0]),
        jnp.array([-4.0, -4.0]),
    )
    once = dpo_loss(pc, pr, rc, rr, beta=0.2)[0]
    doubled_ratio = dpo_loss(rc + 2 * (pc - rc), rr + 2 * (pr - rr), rc, rr, beta=0.1)[0]
    np.testing.assert_allclose(once, doubled_ratio, rtol=1e-6)
    h = (pc - rc) - (pr - rr)
    np.testing.assert_allclose(dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")[0], (h - 5.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(dpo_loss(rc, rr, rc, rr)[0], np.log(2.0), rtol=1e-6)


def write_pairs(path, count=64, seed=0, **extra):
    """Toy preferences: the chosen completion repeats the prompt's last unit, the rejected one is random."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for _ in range(count):
            prompt = rng.integers(0, 20, rng.integers(3, 8)).tolist()
            chosen = [prompt[-1]] * 4
            rejected = rng.integers(0, 20, 4).tolist()
            handle.write(
                json.dumps(
                    {
                        "prompt": {"units": prompt},
                        "chosen": {"units": chosen},
                        "rejected": "".join(f"<Un{u}>" for u in rejected),
                        **extra,
                    }
                )
                + "\n"
            )
    return path


LIMITS = preference.Limits(max_prompt_length=10, max_completion_length=6)


def test_rows_are_built_as_the_reference_does(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": [4, 5], "chosen": [6], "rejected": {"units": [7, 8]}}))
    preference.prepare(str(tmp_path / "p.jsonl"), tmp_path / "store", 20, LIMITS)
    item = preference.PairSource(tmp_path / "store")[0]
    u = tokens.UNIT_OFFSET
    np.testing.assert_array_equal(item["input_ids"][0][:5], [1, 4 + u, 5 + u, 6 + u, 1])
    np.testing.assert_array_equal(item["input_ids"][1][:6], [1, 4 + u, 5 + u, 7 + u, 8 + u, 1])
    np.testing.assert_array_equal(np.flatnonzero(item["completion_mask"][0]), [2, 3])  # targets 6+u and EOS
    np.testing.assert_array_equal(np.flatnonzero(item["completion_mask"][1]), [2, 3, 4])


def test_prompt_tokens_and_padding_change_no_completion_logp(tmp_path):
    graphdef, state = nnx.split(qwen2.init_model(model_config.tiny()))
    params = state.to_pure_dict()
    record = {"prompt": [4, 5, 9], "chosen": [6, 6], "rejected": [7]}
    changed = {**record, "prompt": [4, 11, 9]}
    for name, row, limits in (("a", record, LIMITS), ("b", changed, LIMITS), ("c", record, preference.Limits(20, 12))):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row))
        preference.prepare(str(tmp_path / f"{name}.jsonl"), tmp_path / name, 20, limits)
    items = {name: preference.PairSource(tmp_path / name)[0] for name in "abc"}
    np.testing.assert_array_equal(items["a"]["completion_mask"], items["b"]["completion_mask"])
    logps = {
        name: sequence_logps(params, jax.tree.map(lambda x: jnp.asarray(x)[None], item), graphdef)
        for name, item in items.items()
    }
    np.testing.assert_allclose(logps["c"], logps["a"], atol=1e-5)
    assert not np.allclose(logps["b"], logps["a"], atol=1e-4)


def test_rpo_adds_alpha_times_the_chosen_token_mean_nll(tmp_path):
    """`dpo.rpo_alpha` (TRL's RPO): the step's gradient is that of the mean DPO loss plus alpha times the NLL of
    the chosen completions averaged over all their tokens in the step (2 micro-batches of 3 pairs here)."""
    write_pairs(tmp_path / "p.jsonl", count=6)
    preference.prepare(str(tmp_path / "p.jsonl"), tmp_path / "store", 20, LIMITS)
    reference = np.random.default_rng(1).normal(-20, 2, (6, 2)).astype(np.float32)
    source = preference.PairSource(tmp_path / "store", reference)
    items = [source[i] for i in range(6)]
    batches = {
        key: jnp.asarray(np.stack([item[key] for item in items]).reshape(2, 3, *items[0][key].shape))
        for key in items[0]
    }
    graphdef, state = nnx.split(qwen2.init_model(model_config.tiny()))
    params = state.to_pure_dict()
    alpha = 0.7

    def by_hand(params):
        flat = jax.tree.map(lambda x: x.reshape(6, *x.shape[2:]), batches)
        logps = dpo_module.sequence_logps(params, flat, graphdef)
        losses = dpo_loss(logps[:, 0], logps[:, 1], flat["reference_logps"][:, 0], flat["reference_logps"][:, 1], 0.1)[
            0
        ]
        return jnp.mean(losses) - alpha * jnp.sum(logps[:, 0]) / jnp.sum(flat["completion_mask"][:, 0])

    expected = jax.grad(by_hand)(params)
    for rpo_alpha, want in ((alpha, expected), (0.0, None)):
        settings = ConfigDict({"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid", "rpo_alpha": rpo_alpha})
        optimizer = optax.identity()
        start = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
        stepped, _ = dpo_module.dpo_step(start, batches, 1.0, None, graphdef, optimizer, settings)
        grads = jax.tree.map(lambda before, after: before - after, params, stepped.params)
        if want is None:  # plain DPO: a different gradient
            assert not np.allclose(jax.tree.leaves(grads)[0], jax.tree.leaves(expected)[0], atol=1e-6)
            continue
        for got, wanted in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got, wanted, atol=2e-6)


def test_bad_rows_error_with_file_and_line_or_are_counted(tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", count=3)
    with open(path, "a") as handle:
        handle.write(json.dumps({"prompt": [1], "chosen": [2]}) + "\n")
        handle.write(json.dumps({"prompt": [1], "chosen": [], "rejected": [3]}) + "\n")
        handle.write(json.dumps({"prompt": list(range(15)), "chosen": [2], "rejected": [3]}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:4: missing field\(s\) \['rejected'\]"):
        preference.prepare(str(path), tmp_path / "a", 20, LIMITS)
    strict = preference.Limits(10, 6, truncate=False, bad_rows="skip")
    manifest = preference.prepare(str(path), tmp_path / "b", 20, strict)
    assert manifest["num_pairs"] == 3 and sum(manifest["skipped"].values()) == 3
    truncated = preference.prepare(str(path), tmp_path / "c", 20, preference.Limits(10, 6, bad_rows="skip"))
    assert truncated["num_pairs"] == 4
    last = preference.PairSource(tmp_path / "c")[3]["input_ids"][0]
    np.testing.assert_array_equal(last[:10], [1, *(np.arange(6, 15) + 2)])  # BOS kept, prompt end kept


def test_auto_bleu_filter(tmp_path):
    assert preference.filter_score("the cat", "the cat") == pytest.approx(2 / 3)
    assert preference.filter_score("The cat", "the cat") == 0.0  # case kept, as slamkit's filter keeps it
    assert preference.filter_score("a b", "c d") == 0.0 and preference.filter_score("word", "") == 0.0
    path = write_pairs(tmp_path / "p.jsonl", count=4, prompt_text="he went to the", chosen_text="the shop")
    write_pairs(tmp_path / "q.jsonl", count=2, prompt_text="go go go go", chosen_text="go go")
    manifest = preference.prepare(f"{path},{tmp_path / 'q.jsonl'}", tmp_path / "s", 20, LIMITS)
    assert manifest["num_pairs"] == 4 and manifest["skipped"] == {"auto_bleu": 2}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model pre-trained for a few steps (the DPO starting point)."""
    from test_pretrain import tiny_config

    workdir = tmp_path_factory.mktemp("pretrain")
    loop.run(tiny_config(**{"train.max_steps": 2, "train.eval_every": 0}), workdir)
    return workdir


def dpo_config(init_from, pairs, **changes):
    config = slam_dpo.get_config()
    base = pretrain_synthetic.get_config()
    config.mesh, config.log = base.mesh, base.log
    values = {
        "model.init_from": str(init_from),
        "data.num_units": 20,
        "dpo.train_path": str(pairs),
        "dpo.max_prompt_length": 10,
        "dpo.max_completion_length": 6,
        "train.per_device_batch_size": 1,
        "train.grad_accum_steps": 1,
        "train.learning_rate": 3e-3,
        "train.warmup_steps": 2,
        "train.max_steps": 12,
        "train.time_budget": "",
        "train.peak_flops_per_device": 1e11,
        "checkpoint.every_steps": 4,
        "log.every_steps": 1,
        "model.compute_dtype": "float32",
    }
    for key, value in {**values, **changes}.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


def test_precomputed_and_frozen_references_agree_and_start_at_log2(pretrained, tmp_path):
    pairs = write_pairs(tmp_path / "p.jsonl")
    first = {}
    for reference in ("precomputed", "frozen"):
        workdir = tmp_path / reference
        dpo.run(dpo_config(pretrained, pairs, **{"dpo.reference": reference, "train.max_steps": 3}), workdir)
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        first[reference] = rows
        assert rows[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
        assert {"reward_accuracy", "reward_margin"} <= set(rows[0])
    for a, b in zip(first["precomputed"], first["frozen"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    stored = next((tmp_path / "precomputed" / "data").glob("preference-*/reference_logps-*.npy"))
    logps = np.load(stored)
    model_dir = storage.resolve_model_dir(pretrained)
    params = storage.load_params(model_dir)
    graphdef = nnx.graphdef(qwen2.abstract_model(storage.load_config(model_dir).replace(compute_dtype="float32")))
    source = preference.PairSource(stored.parent)
    direct = sequence_logps(params, jax.tree.map(lambda x: jnp.asarray(x)[None], source[5]), graphdef)
    np.testing.assert_allclose(logps[5], np.asarray(direct)[0], atol=1e-4)


def test_dpo_learns_the_preference_and_resumes_identically(pretrained, tmp_path):
    pairs = write_pairs(tmp_path / "p.jsonl", count=128)
    config = dpo_config(
        pretrained,
        pairs,
        **{"train.per_device_batch_size": 2, "train.max_steps": 24, "checkpoint.keep": 10, "train.learning_rate": 1e-2},
    )
    result = dpo.run(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean([row["reward_accuracy"] for row in rows[-4:]]) > 0.9, [r["reward_accuracy"] for r in rows]
    assert result["step"] == 24
    final = jax.tree.leaves(jax.device_get(storage.load_params(tmp_path / "run" / "checkpoints" / "24")))
    for step in (12, 16, 20, 24):  # as if killed right after the step-8 checkpoint
        shutil.rmtree(tmp_path / "run" / "checkpoints" / str(step))
    dpo.run(config, tmp_path / "run")
    resumed = jax.tree.leaves(jax.device_get(storage.load_params(tmp_path / "run" / "checkpoints" / "24")))
    for got, want in zip(resumed, final, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_dpo_resume_refuses_other_pairs_or_lengths(pretrained, tmp_path):
    """The run manifest of a DPO workdir keeps its pairs (by content) and lengths, not pre-training's data path."""
    pairs = write_pairs(tmp_path / "p.jsonl")
    dpo.run(dpo_config(pretrained, pairs, **{"train.max_steps": 2, "checkpoint.every_steps": 2}), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "run_manifest.json").read_text())["settings"]
    assert "data.train_path" not in recorded and recorded["dpo.max_prompt_length"] == 10
    longer = dpo_config(pretrained, pairs, **{"train.max_steps": 4, "dpo.max_prompt_length": 12})
    with pytest.raises(ValueError, match=r"dpo\.max_prompt_length was 10, now 12"):
        dpo.run(longer, tmp_path / "run")
    write_pairs(pairs, count=20)  # the same path, other rows
    with pytest.raises(ValueError, match=r"dpo\.train_path was '1 file, .*now '1 file, "):
        dpo.run(dpo_config(pretrained, pairs, **{"train.max_steps": 4}), tmp_path / "run")


def test_pipeline_resumes_between_stages(tmp_path):
    from test_pretrain import tiny_config

    from configs import slam_pipeline
    from slam_jax import pipeline

    pairs = write_pairs(tmp_path / "p.jsonl", count=16)
    config = slam_pipeline.get_config()
    config.pretrain = tiny_config(**{"train.max_steps": 2, "train.eval_every": 0})
    config.dpo = dpo_config("", pairs, **{"train.max_steps": 2})
    first = pipeline.run(config, tmp_path / "run")
    assert first["pretrain"]["step"] == 2 and first["dpo"]["step"] == 2
    final = jax.tree.leaves(jax.device_get(storage.load_params(tmp_path / "run" / "dpo" / "checkpoints" / "2")))
    shutil.rmtree(tmp_path / "run" / "dpo")  # as if stopped between the stages
    config.dpo = dpo_config("", pairs, **{"train.max_steps": 2})
    second = pipeline.run(config, tmp_path / "run")
    assert second["pretrain"] == json.loads(json.dumps(first["pretrain"]))
    again = jax.tree.leaves(jax.device_get(storage.load_params(tmp_path / "run" / "dpo" / "checkpoints" / "2")))
    for got, want in zip(again, final, strict=True):
        np.testing.assert_array_equal(got, want)


def test_two_micro_batches_of_three_pairs_step_like_one_batch_of_six(tmp_path):
    """The shared accumulation (training/step.py): micro-batching changes neither the update nor the metrics."""
    write_pairs(tmp_path / "p.jsonl", count=6)
    preference.prepare(str(tmp_path / "p.jsonl"), tmp_path / "store", 20, LIMITS)
    reference = np.random.default_rng(2).normal(-20, 2, (6, 2)).astype(np.float32)
    source = preference.PairSource(tmp_path / "store", reference)
    whole = {key: jnp.asarray(np.stack([source[i][key] for i in range(6)]))[None] for key in source[0]}
    split = jax.tree.map(lambda x: x.reshape(2, 3, *x.shape[2:]), whole)
    graphdef, state = nnx.split(qwen2.init_model(model_config.tiny()))
    params = state.to_pure_dict()
    settings = ConfigDict({"beta": 0.1, "label_smoothing": 0.1, "loss_type": "sigmoid", "rpo_alpha": 0.5})
    optimizer = optax.identity()  # the update is the gradient itself
    start = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    step = jax.jit(lambda s, b: dpo_module.dpo_step(s, b, 1.0, None, graphdef, optimizer, settings))
    (whole_state, whole_metrics), (split_state, split_metrics) = step(start, whole), step(start, split)
    assert int(split_state.step) == int(whole_state.step) == 1
    assert set(split_metrics) == set(whole_metrics)
    for name in whole_metrics:
        np.testing.assert_allclose(split_metrics[name], whole_metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for got, want in zip(jax.tree.leaves(split_state.params), jax.tree.leaves(whole_state.params), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-6)
