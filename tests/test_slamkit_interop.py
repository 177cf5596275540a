"""slamkit checkpoints as they are: import, logits, and an export that keeps the source's base model.

The reference's speech LM (`UnitLM`) is rebuilt here from its documented layout with transformers' own classes:
its config has `model_type` speech_language_model, `base_model_name` (a hub id or a local folder), the text
model's config nested as `base_config` with the TEXT vocabulary, and the top-level `vocab_size`, the speech
vocabulary, to which the text model's embedding is resized; its weights are the text model's under `lm.`.
Loading reads the config of `base_model_name`, then every key of `base_config`, as slamkit's loader does.
"""

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from conftest import TINY_HF, hf_logits, random_hf_model

from conversion import flax_to_hf, hf_to_flax, qwen2_hf
from slam_jax import load_model, tokens
from slam_jax.models import storage

NUM_UNITS = 100
SPEECH_VOCAB = tokens.vocab_size_for(NUM_UNITS)
TEXT_VOCAB = 300  # a stand-in for Qwen2.5's 151,936: only larger than the speech vocabulary matters
LOGITS_TOLERANCE = 1e-5  # float32 on both sides


class UnitLMLayoutConfig(transformers.PretrainedConfig):
    """slamkit's `UnitLMConfig` layout: the speech LM's config wrapping its text model's."""

    model_type = "speech_language_model"

    def __init__(self, base_model_name: str = "", base_config=None, vocab_size: int = SPEECH_VOCAB, **kwargs):
        super().__init__(**kwargs)
        self.base_model_name = base_model_name
        self.vocab_size = vocab_size
        self.twist_init = True
        if isinstance(base_config, dict):  # read back from config.json: the named base's config, then these keys
            base_config = transformers.AutoConfig.from_pretrained(base_model_name, **{**base_config, "dtype": None})
        self.base_config = base_config
        self.tie_word_embeddings = base_config.tie_word_embeddings


class UnitLMLayout(transformers.PreTrainedModel):
    """slamkit's `UnitLM` layout: the text model under `lm`, its embedding resized to the speech vocabulary."""

    config_class = UnitLMLayoutConfig
    base_model_prefix = "lm"

    def __init__(self, config: UnitLMLayoutConfig):
        super().__init__(config)
        # slamkit's transformers copies the config it builds from, so `base_config` keeps the text vocabulary
        self.lm = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config.base_config))
        self.lm.resize_token_embeddings(config.vocab_size)
        self.post_init()

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids)


def text_base(folder, tied: bool = True) -> transformers.Qwen2Config:
    """A tiny Qwen2 text model's config, saved in `folder` as a local base model, with the speech token ids
    and RoPE theta that slamkit's recipe passes to it."""
    config = transformers.Qwen2Config(
        **{**TINY_HF, "vocab_size": TEXT_VOCAB, "tie_word_embeddings": tied},
        **qwen2_hf.SPEECH_TOKEN_IDS,
    )
    config.save_pretrained(folder)
    return config


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random (norm scales around 1), so that no mapping of a tensor hides."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.15)


def slamkit_checkpoint(tmp_path, tied: bool = True, base_model_name: str | None = None):
    """A speech LM saved by `save_pretrained` in slamkit's layout; (model, folder, base folder)."""
    base_folder = tmp_path / "local_qwen"
    config = UnitLMLayoutConfig(
        base_model_name=str(base_folder) if base_model_name is None else base_model_name,
        base_config=text_base(base_folder, tied),
        vocab_size=SPEECH_VOCAB,
    )
    model = UnitLMLayout(config).eval()
    randomise(model, seed=7)
    model.save_pretrained(tmp_path / "slamkit")
    return model, tmp_path / "slamkit", base_folder


def read_json(path) -> dict:
    return json.loads(path.read_text())


def state_dict(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}


def max_logits_difference(flax_dir, reference, input_ids) -> float:
    flax_logits = np.asarray(load_model(flax_dir, compute_dtype="float32")(input_ids))
    return float(np.abs(flax_logits - hf_logits(reference, input_ids)).max())


@pytest.mark.parametrize("tied", [True, False])
def test_slamkit_checkpoint_imports_with_its_speech_vocabulary(tmp_path, tied):
    reference, folder, base_folder = slamkit_checkpoint(tmp_path, tied)
    saved = read_json(folder / "config.json")
    assert saved["model_type"] == "speech_language_model" and saved["vocab_size"] == SPEECH_VOCAB
    assert saved["base_config"]["vocab_size"] == TEXT_VOCAB  # the layout the issue describes

    hf_to_flax.convert(str(folder), tmp_path / "flax")
    config = storage.load_config(tmp_path / "flax")
    assert (config.vocab_size, config.tie_word_embeddings, config.rope_theta) == (SPEECH_VOCAB, tied, 10_000.0)
    input_ids = np.random.default_rng(0).integers(0, SPEECH_VOCAB, (2, 23))
    assert max_logits_difference(tmp_path / "flax", reference, input_ids) <= LOGITS_TOLERANCE

    provenance = storage.load_provenance(tmp_path / "flax")
    assert provenance["source_format"] == "slamkit"
    assert provenance["base_model_name"] == str(base_folder) and provenance["assumed"] == []
    assert provenance["base_config"] == saved["base_config"]


@pytest.mark.parametrize("tied", [True, False])
def test_export_keeps_a_local_base_model_and_loads_offline_as_slamkit_does(tmp_path, tied):
    reference, folder, base_folder = slamkit_checkpoint(tmp_path, tied)
    hf_to_flax.convert(str(folder), tmp_path / "flax")
    flax_to_hf.export(tmp_path / "flax", tmp_path / "export", format="slamkit")

    exported = read_json(tmp_path / "export" / "config.json")
    original = read_json(folder / "config.json")
    assert exported["base_model_name"] == str(base_folder)
    assert exported["vocab_size"] == SPEECH_VOCAB and exported["base_config"]["vocab_size"] == TEXT_VOCAB
    assert exported["base_config"]["max_window_layers"] == original["base_config"]["max_window_layers"]
    reloaded = UnitLMLayout.from_pretrained(tmp_path / "export").eval()  # reads the local base: no network
    assert reloaded.config.base_config.vocab_size == TEXT_VOCAB
    got, want = state_dict(reloaded), state_dict(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_unknown_base_model_is_assumed_with_a_note_at_import_and_export(tmp_path, capsys):
    _, folder, _ = slamkit_checkpoint(tmp_path)
    config = read_json(folder / "config.json")
    del config["base_model_name"]
    (folder / "config.json").write_text(json.dumps(config))

    capsys.readouterr()
    assert hf_to_flax.main(["--model", str(folder), "--out", str(tmp_path / "flax")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "base_model_name" in err and "Qwen/Qwen2.5-0.5B" in err
    provenance = storage.load_provenance(tmp_path / "flax")
    assert provenance["base_model_name"] == "Qwen/Qwen2.5-0.5B" and provenance["assumed"] == ["base_model_name"]

    export = ["--checkpoint", str(tmp_path / "flax"), "--out", str(tmp_path / "export"), "--format", "slamkit"]
    assert flax_to_hf.main(export) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "assumed" in err and "Qwen/Qwen2.5-0.5B" in err
    assert read_json(tmp_path / "export" / "config.json")["base_model_name"] == "Qwen/Qwen2.5-0.5B"


def test_model_without_provenance_exports_with_the_documented_assumption(tmp_path, capsys, hf_checkpoint):
    _, folder = hf_checkpoint(vocab_size=SPEECH_VOCAB)
    hf_to_flax.convert(str(folder), tmp_path / "flax")
    config = storage.load_config(tmp_path / "flax")
    storage.save_model(tmp_path / "bare", config, storage.load_params(tmp_path / "flax"))  # like a training step

    capsys.readouterr()
    flax_to_hf.export(tmp_path / "bare", tmp_path / "export", format="slamkit")
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "records no base model" in err and "Qwen/Qwen2.5-0.5B" in err
    exported = read_json(tmp_path / "export" / "config.json")
    assert exported["base_model_name"] == "Qwen/Qwen2.5-0.5B"
    assert exported["base_config"]["vocab_size"] == SPEECH_VOCAB == exported["vocab_size"]


def test_twisted_text_model_exports_in_slamkit_layout_naming_its_text_model(tmp_path):
    text = random_hf_model(seed=3, vocab_size=TEXT_VOCAB, rope_theta=1_000_000.0)
    text.save_pretrained(tmp_path / "text")
    hf_to_flax.convert(str(tmp_path / "text"), tmp_path / "speech", twist_vocab=True, num_units=NUM_UNITS)
    flax_to_hf.export(tmp_path / "speech", tmp_path / "export", format="slamkit")

    exported = read_json(tmp_path / "export" / "config.json")
    assert exported["base_model_name"] == str((tmp_path / "text").absolute())
    base = exported["base_config"]
    assert (base["vocab_size"], base["rope_theta"], base["max_position_embeddings"]) == (TEXT_VOCAB, 10_000.0, 1024)
    assert (base["pad_token_id"], base["bos_token_id"], base["eos_token_id"]) == (0, 1, 1)
    reloaded = UnitLMLayout.from_pretrained(tmp_path / "export").eval()
    input_ids = np.random.default_rng(4).integers(0, SPEECH_VOCAB, (2, 17))
    assert max_logits_difference(tmp_path / "speech", reloaded, input_ids) <= LOGITS_TOLERANCE
