"""The LLM judge (`eval.metric=llm_judge`, slam_jax/evaluation/llm_judge.py): a tiny random Qwen2 and Llama chat
model (a byte-level tokenizer with a chat template, built offline), converted by conversion.hf_to_flax, answer the
chat prompts exactly as transformers' greedy `generate` does, with their parameters sharded over the 8 test devices;
slamkit's score parsing on hand-written answers; and one `eval.metric=llm_judge` run through the config on the tiny
pipeline of tests/test_genppl.py, its transcripts and answers recomputed with transformers."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import random_hf_model
from test_genppl import build_models, config_for, transformers_transcripts
from text_lm_fixtures import randomized
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.models.llama.modeling_llama import LlamaForCausalLM

from conversion import hf_to_flax
from slam_jax.evaluation import llm_judge, pair_metrics
from slam_jax.files import read_jsonl
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.speech import audio, vocoders

SPECIALS = ["<|begin|>", "<|end|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOCAB = 264  # 256 bytes + 4 specials + 4 unused rows
END_ID = 257
MAX_NEW_TOKENS = 10
TEXTS = ["rate: the cat sat", "The text prompt is: a dog ran. Rate it \\boxed{x}", "x"]


def save_chat_tokenizer(folder: Path, chat_template: str | None = CHAT_TEMPLATE, jinja: bool = False) -> None:
    """A byte-level tokenizer (every byte one token, no merges) with <|begin|> as BOS, <|end|> as EOS and a chat
    template in tokenizer_config.json, or in chat_template.jinja (`jinja`: transformers 5's default); both files are
    among those conversion.hf_to_flax copies."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIALS)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin|>", eos_token="<|end|>")
    assert fast.convert_tokens_to_ids("<|end|>") == END_ID
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder, save_jinja_files=jinja)
    assert (folder / "chat_template.jinja").is_file() == (jinja and bool(chat_template))


def random_chat_llama(seed: int = 1) -> LlamaForCausalLM:
    """An untied Llama with llama3 RoPE scaling (Llama-3.1-8B-Instruct's kind), every tensor random."""
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10_000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=256,
        eos_token_id=END_ID,
        tie_word_embeddings=False,
        rope_parameters=rope,
    )
    return randomized(config, seed)


def random_chat_qwen2(seed: int = 2) -> transformers.Qwen2ForCausalLM:
    model = random_hf_model(seed, vocab_size=VOCAB, max_position_embeddings=4096)
    model.config.bos_token_id, model.config.eos_token_id = 256, END_ID
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 256, END_ID
    return model


def converted(root: Path, name: str, hf_model) -> tuple[Path, Path]:
    """(the transformers folder, the converted judge folder) of `hf_model` with the chat tokenizer."""
    hf_model.save_pretrained(root / f"{name}_hf")
    save_chat_tokenizer(root / f"{name}_hf", jinja=name == "llama")
    assert hf_to_flax.main(["--model", str(root / f"{name}_hf"), "--out", str(root / name)]) == 0
    return root / f"{name}_hf", root / name


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("judges")
    return {
        "qwen2": converted(root, "qwen2", random_chat_qwen2()),
        "llama": converted(root, "llama", random_chat_llama()),
    }


def transformers_answers(hf_folder: Path, texts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy `generate` of each text as the one user message of the chat template, one prompt at a time, cut
    before the EOS."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    answers = []
    for text in texts:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        ids = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=END_ID)
        answers.append(llm_judge.until_eos(out[0, ids.shape[1] :].numpy(), [END_ID]))
    return answers


@pytest.mark.parametrize("name, mesh", [("qwen2", "fsdp"), ("llama", "tensor")])
def test_greedy_answers_are_transformers_generate(judges, name, mesh):
    hf_folder, folder = judges[name]
    settings = llm_judge.JudgeSettings(
        model=str(folder), max_new_tokens=MAX_NEW_TOKENS, compute_dtype="float32", batch_size=8, mesh=mesh
    )
    judge = llm_judge.LLMJudge(settings)
    assert judge.eos_ids == [END_ID] and judge.config.architecture == name
    assert judge.mesh.shape[mesh] == jax.local_device_count() == 8
    kernel = judge.state["layers"]["mlp"]["up_proj"]["kernel"][...]  # [layers, hidden, intermediate]
    split = 1 if mesh == "fsdp" else 2  # fsdp: the hidden dimension over the 8 devices; tensor: the MLP columns
    assert kernel.addressable_shards[0].data.shape[split] * 8 == kernel.shape[split]
    prompts = [judge.chat_ids(text) for text in TEXTS]
    assert prompts[0][0] == 256 and prompts[0][-1] == SPECIALS.index("<|assistant|>") + 256
    ours = judge.answer_ids(prompts)
    assert ours == transformers_answers(hf_folder, TEXTS, MAX_NEW_TOKENS)
    assert all(len(answer) == MAX_NEW_TOKENS for answer in ours)  # no EOS came: every row ran to the end


def test_sampled_answers_do_not_depend_on_the_batch(judges):
    _, folder = judges["qwen2"]
    settings = llm_judge.JudgeSettings(
        model=str(folder),
        instruction="[prompt_audio_transcription] then [generated_audio_transcription]?",
        max_new_tokens=6,
        compute_dtype="float32",
        temperature=1.0,
        top_p=0.9,
        seed=3,
    )
    prompts = [" a" * (index + 1) for index in range(10)]  # 10 lengths: 2 batches of 8 rows, or 1 of 16
    continuations = [" b" * (10 - index) for index in range(10)]
    together = [
        rating["answer"] for rating in llm_judge.LLMJudge(settings.replace(batch_size=16)).rate(prompts, continuations)
    ]
    judge = llm_judge.LLMJudge(settings.replace(batch_size=8))
    assert [rating["answer"] for rating in judge.rate(prompts, continuations)] == together
    assert judge.rate(prompts[:1], continuations[:1])[0]["answer"] == together[0]
    other_seed = llm_judge.LLMJudge(settings.replace(seed=4)).rate(prompts, continuations)
    assert [rating["answer"] for rating in other_seed] != together


@pytest.mark.parametrize(
    "answer, score",
    [
        ("The sample is fine. The final answer is $\\boxed{4}$", 4),  # well formed
        ("\\boxed{2} ... on reflection \\boxed{5}", 2),  # several boxes: the first
        ("The final answer is 4.", None),  # no box
        ("The final answer is $\\boxed{x}$", None),  # the instruction's own placeholder
        ("\\boxed{four}", None),  # not a number
        ("\\boxed{4.5}", None),  # not an integer
        ("\\boxed{ 4 }", None),  # spaces: the reference's pattern wants digits alone
        ("\\boxed{-1}", None),  # a sign is not a digit
        ("boxed{4}", None),  # no backslash
        ("\\boxed{7}", 7),  # out of the scale: kept, as the reference keeps it
        ("\\boxed{03}", 3),
        ("\\boxed{}", None),
        ("", None),
    ],
)
def test_scores_are_parsed_as_slamkit_parses_them(answer, score):
    assert llm_judge.parse_score(answer) == score


def test_the_mean_is_over_the_parsed_answers():
    ratings = [{"score": 4}, {"score": None}, {"score": 7}, {"score": 1}]
    summary = llm_judge.summarise(ratings, {"name": "judge"})
    assert summary["llm_judge"] == 4.0 and summary["judge_num_scored"] == 3
    assert summary["judge_num_unparsed"] == 1 and summary["judge_unparsed_share"] == 0.25
    assert summary["judge_num_out_of_scale"] == 1 and summary["judge"]["ratings"] == llm_judge.RATINGS
    assert llm_judge.summarise([{"score": None}], {"name": "judge"})["llm_judge"] is None


def test_the_instruction_is_slamkits_and_is_filled_as_it_fills_it():
    assert llm_judge.INSTRUCTION.startswith("The task is evaluating the relevance and likelihood")
    assert '"The final answer is $\\boxed{x}$"' in llm_judge.INSTRUCTION
    assert "\n5: The text continuation is very likely and highly relevant.\n You should" in llm_judge.INSTRUCTION
    filled = llm_judge.fill(llm_judge.INSTRUCTION, " Once upon", " a time")
    assert 'The text prompt is: " Once upon", and the text continuation is :" a time".' in filled
    assert llm_judge.JudgeSettings().prompt == llm_judge.INSTRUCTION
    with pytest.raises(ValueError, match=r"instruction: lacks \[generated_audio_transcription\]"):
        llm_judge.JudgeSettings(instruction="rate [prompt_audio_transcription]")


def test_a_judge_without_a_chat_template_is_one_line(tmp_path):
    random_chat_qwen2().save_pretrained(tmp_path / "hf")
    save_chat_tokenizer(tmp_path / "hf", chat_template=None)
    assert hf_to_flax.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "base")]) == 0
    with pytest.raises(ValueError, match=r"eval.genppl.judge.model=.*base: its tokenizer has no chat template"):
        llm_judge.LLMJudge(llm_judge.JudgeSettings(model=str(tmp_path / "base")))
    with pytest.raises(
        FileNotFoundError, match=r"eval.genppl.judge.model=.*hf: not a converted text LM \(needs model_config.json"
    ):
        llm_judge.LLMJudge(llm_judge.JudgeSettings(model=str(tmp_path / "hf")))


def test_llama3_1_8b_is_the_published_size():
    config = model_config.llama3_1_8b()
    assert qwen2.count_params(config) == config.num_params() == 8_030_261_248


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("judge_pipeline"))


def test_llm_judge_through_the_config_is_the_reference_on_transformers_outputs(pipeline, judges, tmp_path):
    hf_folder, folder = judges["llama"]
    with pytest.raises(ValueError, match="eval.genppl.judge.model is empty: llm_judge rates the continuations"):
        pair_metrics.run(config_for(pipeline, "llm_judge", text_lm=""), tmp_path / "none")
    config = config_for(pipeline, "llm_as_judge", text_lm="")
    judge = config.eval.genppl.judge
    judge.model, judge.max_new_tokens, judge.compute_dtype = str(folder), MAX_NEW_TOKENS, "float32"
    result = pair_metrics.run(config, tmp_path)["llm_judge"]
    samples = read_jsonl(tmp_path / "eval" / "llm_judge_samples.jsonl")
    ratings = read_jsonl(tmp_path / "eval" / llm_judge.RATINGS)
    assert result == json.loads((tmp_path / "eval" / "llm_judge.json").read_text())
    assert len(samples) == len(ratings) == result["num_samples"] == 3
    assert [rating["file_name"] for rating in ratings] == [sample["file_name"] for sample in samples]
    assert result["judge"]["name"] == "llama" and result["judge"]["temperature"] == 0.0
    assert result["judge"]["seed"] == 0 and result["settings"]["judge"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert {"judge_transcribe", "judge"} <= set(result["stage_seconds"])

    prompts = [audio.read_audio(sample["file_name"], 1.0).samples for sample in samples]
    vocoder = vocoders.load_vocoder(str(pipeline["units"]))
    continuations = [vocoder.vocode(sample["units"], predict_durations=True) for sample in samples]
    assert [r["prompt_transcript"] for r in ratings] == transformers_transcripts(pipeline, prompts)
    assert [r["continuation_transcript"] for r in ratings] == transformers_transcripts(pipeline, continuations)
    texts = [
        llm_judge.fill(llm_judge.INSTRUCTION, r["prompt_transcript"], r["continuation_transcript"]) for r in ratings
    ]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folder)
    expected = [
        tokenizer.decode(ids, skip_special_tokens=True)
        for ids in transformers_answers(hf_folder, texts, MAX_NEW_TOKENS)
    ]
    assert [rating["answer"] for rating in ratings] == expected
    assert [rating["score"] for rating in ratings] == [llm_judge.parse_score(answer) for answer in expected]
    scores = [rating["score"] for rating in ratings if rating["score"] is not None]
    assert result["llm_judge"] == (float(np.mean(scores)) if scores else None)
    assert result["judge_num_unparsed"] == 3 - len(scores)
