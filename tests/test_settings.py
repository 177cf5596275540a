"""The typed settings of the speech, evaluation, demo and selfcheck jobs: every config file loads into its job's
class with the configs' defaults, a wrong value or key is one line naming `config.<section>.<key>` (also on the
command line), and the unit cache keeps its folder names."""

import copy
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import demo, generate, stinystories, tokenize_mfcc
from configs import eval as eval_config
from configs import selfcheck as selfcheck_config
from configs import tokenize as tokenize_config
from slam_jax import modes, pipeline
from slam_jax.demo.report import ReportJob
from slam_jax.demo.text import TextJob, TextSettings
from slam_jax.evaluation.generation import GenerateJob, GenerateSettings
from slam_jax.evaluation.pair_metrics import EvalJob, EvalSettings
from slam_jax.selfcheck import SelfcheckJob, SelfcheckSettings
from slam_jax.speech import audio_units
from slam_jax.speech.spoken_sets import SynthesizeJob, SynthSettings
from slam_jax.speech.tokenize import TokenizeJob, TokenizeSettings

ROOT = Path(__file__).resolve().parents[1]
JOBS = {
    "tokenize": TokenizeJob,
    "synthesize": SynthesizeJob,
    "eval": EvalJob,
    "generate": GenerateJob,
    "demo_text": TextJob,
    "report": ReportJob,
    "selfcheck": SelfcheckJob,
}
CONFIG_FILES = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if path.stem != "__init__")
# The config files these jobs run: their own, and the pipelines (whose stages of these jobs are checked too).
OUR_CONFIGS = [
    name for name in CONFIG_FILES if importlib.import_module(f"configs.{name}").get_config().mode in {*JOBS, "pipeline"}
]
# What XLA's native libraries log at `import jax` (see tests/test_tokenize.py): not slam_jax's output.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ )")


@pytest.fixture
def model_files(tmp_path, monkeypatch) -> Path:
    """A working folder holding the encoder and centroids paths that configs/tokenize.py names (relative)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mhubert_25hz").mkdir(parents=True)
    (tmp_path / "models" / "mhubert_25hz_L11_km500.npy").write_bytes(b"")
    return tmp_path


def create_paths(value, workdir: Path) -> None:
    """Make every path under `workdir` that a (substituted) stage config names, as the earlier stages would."""
    if isinstance(value, dict):
        for item in value.values():
            create_paths(item, workdir)
        return
    for piece in str(value).split(",") if isinstance(value, str) else ():
        if not piece.startswith(str(workdir)):
            continue
        path = Path(piece)
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)


def error_of(job_class, values) -> str:
    """The one-line message a config (as a dict) is refused with."""
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        job_class.from_config(values, "config")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_config_files_of_these_jobs_are_all_listed():
    expected = [
        "demo",
        "eval",
        "generate",
        "genppl",
        "llm_judge",
        "selfcheck",
        "slam_pipeline",
        "spokenswag",
        "stinystories",
        "tokenize",
    ]
    assert OUR_CONFIGS == [*expected, "tokenize_mfcc"]


@pytest.mark.parametrize("name", OUR_CONFIGS)
def test_every_config_of_these_jobs_loads_into_its_job_class(name, model_files):
    config = importlib.import_module(f"configs.{name}").get_config()
    if config.mode == "pipeline":
        job, sections = pipeline.parse(config)
        stages = job.pipeline.names()
        assert stages and set(stages) <= set(sections)
        for stage in stages:
            mode = sections[stage].get("mode", stage)
            modes.check(mode)
            if mode in JOBS:
                stage_config = pipeline.with_workdir(sections[stage], model_files / "run")
                create_paths(stage_config.to_dict(), model_files / "run")
                assert isinstance(JOBS[mode].from_config(stage_config, "config"), JOBS[mode])
        return
    job = JOBS[config.mode].from_config(config, "config")
    assert job.mode == config.mode and job.to_dict().keys() == config.to_dict().keys()


def test_the_demo_stages_of_these_jobs_are_all_checked():
    stage_modes = {stage: section.get("mode", stage) for stage, section in pipeline.parse(demo.get_config())[1].items()}
    ours = {stage for stage, mode in stage_modes.items() if mode in JOBS}
    assert ours == {"text", "stories", "spokenswag", "benchmarks", "eval_pretrain", "eval_dpo", "speak", "report"}


def test_section_defaults_are_the_configs_values():
    assert TokenizeSettings().to_dict() == tokenize_config.get_config().tokenize.to_dict()
    assert EvalSettings().to_dict() == eval_config.get_config().eval.to_dict()
    assert GenerateSettings().to_dict() == generate.get_config().generate.to_dict()
    assert SynthSettings().to_dict() == stinystories.get_config().synth.to_dict()
    assert TextSettings().to_dict() == demo.text_stage().text.to_dict()
    selfcheck = selfcheck_config.get_config()
    assert SelfcheckSettings().to_dict() == selfcheck.selfcheck.to_dict()
    assert SelfcheckJob().model.preset == selfcheck.model.preset


def test_a_section_without_its_paths_takes_the_defaults():
    section = demo.tokenizer()  # data_path and out_path deleted: the builders set them
    settings = TokenizeSettings.from_config(section, "tokenize")
    assert (settings.data_path, settings.out_path, settings.fit_units) == ("", "", demo.NUM_UNITS)


def with_value(config, keys: str, value) -> dict:
    """The config (or dict) as a dict with `keys` (dotted) set to `value`: any type, as a caller may give it."""
    values = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else config)
    *parents, leaf = keys.split(".")
    node = values
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    return values


@pytest.mark.parametrize(
    ("config", "job_class", "key", "value", "message"),
    [
        (tokenize_mfcc, TokenizeJob, "tokenize.batch_size", 0, "config.tokenize.batch_size=0: must be > 0"),
        (tokenize_mfcc, TokenizeJob, "tokenize.batch_size", "8", "config.tokenize.batch_size='8': expected an integer"),
        (tokenize_mfcc, TokenizeJob, "tokenize.valid_fraction", 1.5, "config.tokenize.valid_fraction=1.5: must be <="),
        (tokenize_mfcc, TokenizeJob, "tokenize.conv_chunk_frames", -2, "config.tokenize.conv_chunk_frames=-2: must be"),
        (
            tokenize_mfcc,
            TokenizeJob,
            "tokenize.compute_dtype",
            "float64",
            "config.tokenize.compute_dtype='float64': not",
        ),
        (tokenize_mfcc, TokenizeJob, "tokenize.dedup", 1, "config.tokenize.dedup=1: expected true or false"),
        (tokenize_mfcc, TokenizeJob, "tokenize.mfcc.kind", "mel", "config.tokenize.mfcc.kind='mel': not one of"),
        (tokenize_mfcc, TokenizeJob, "tokenize.mfcc.num_mfcc", 60, "config.tokenize.mfcc.num_mfcc=60: must be <= num"),
        (tokenize_mfcc, TokenizeJob, "tokenize.reference_padding", True, "config.tokenize.reference_padding=True: "),
        (tokenize_mfcc, TokenizeJob, "tokenize.window_overlap_seconds", 60.0, "config.tokenize.window_overlap_sec"),
        (tokenize_mfcc, TokenizeJob, "tokenize.batch_sise", 8, "config.tokenize: unknown keys ['batch_sise']"),
        (tokenize_mfcc, TokenizeJob, "bogus", 1, "config: unknown keys ['bogus']"),
        (tokenize_mfcc, TokenizeJob, "mode", "eval", "config.mode='eval': not one of ['tokenize']"),
        (eval_config, EvalJob, "eval.compute_dtype", "float64", "config.eval.compute_dtype='float64': not one of"),
        (eval_config, EvalJob, "eval.batch_size", -1, "config.eval.batch_size=-1: must be > 0"),
        (eval_config, EvalJob, "eval.model", "absent/model", "config.eval.model='absent/model': no such file"),
        (eval_config, EvalJob, "tokenize.layer", -1, "config.tokenize.layer=-1: must be >= 0"),
        (generate, GenerateJob, "generate.top_p", 1.5, "config.generate.top_p=1.5: must be <= 1"),
        (generate, GenerateJob, "generate.temperature", -0.5, "config.generate.temperature=-0.5: must be >= 0"),
        (generate, GenerateJob, "generate.max_new_tokens", 0, "config.generate.max_new_tokens=0: must be >= 1"),
        (stinystories, SynthesizeJob, "synth.kind", "stories", "config.synth.kind='stories': not one of"),
        (stinystories, SynthesizeJob, "synth.voices", "en-us:999", "config.synth.voices='en-us:999': voice en-us"),
        (stinystories, SynthesizeJob, "synth.backend", "nope", "config.synth.backend='nope': TTS backend"),
        (stinystories, SynthesizeJob, "synth.text_path", "absent.txt", "config.synth.text_path='absent.txt': no such"),
        (selfcheck_config, SelfcheckJob, "model.preset", "huge", "config.model.preset='huge': not one of"),
        (selfcheck_config, SelfcheckJob, "selfcheck.lengths", [], "config.selfcheck.lengths=(): give one or more"),
        (selfcheck_config, SelfcheckJob, "selfcheck.lengths", "8,20", "config.selfcheck.lengths='8,20': expected a"),
        (selfcheck_config, SelfcheckJob, "selfcheck.text_vocab_size", 100, "config.selfcheck.text_vocab_size=100: "),
    ],
)
def test_a_wrong_value_or_key_is_one_line_naming_it(config, job_class, key, value, message, model_files):
    assert error_of(job_class, with_value(config.get_config(), key, value)).startswith(message)


def test_demo_text_and_report_sections_are_checked(tmp_path):
    text = demo.text_stage()
    assert error_of(TextJob, with_value(text, "text.num_stories", -1)) == "config.text.num_stories=-1: must be >= 0"
    report = pipeline.with_workdir(demo.report_stage(), tmp_path)
    assert error_of(ReportJob, report.to_dict()).startswith(f"config.report.before='{tmp_path}/eval_pretrain/eval'")
    assert error_of(ReportJob, {"report": {"title": "t"}}) == "config.report: missing keys ['out_path']"
    assert error_of(ReportJob, {"report": {"out_path": "r.md", "folder": "x"}}).startswith(
        "config.report: unknown keys ['folder']"
    )


def test_the_tokeniser_files_are_checked_only_where_they_are_read(model_files):
    config = tokenize_config.get_config()
    absent_encoder = with_value(config, "tokenize.encoder_path", "models/absent")
    assert error_of(TokenizeJob, absent_encoder).startswith("config.tokenize.encoder_path='models/absent': no such")
    absent_centroids = with_value(config, "tokenize.kmeans_path", "absent.npy")
    assert error_of(TokenizeJob, absent_centroids).startswith("config.tokenize.kmeans_path='absent.npy': no such")
    fitted = with_value(with_value(config, "tokenize.kmeans_path", "absent.npy"), "tokenize.fit_units", 10)
    assert TokenizeJob.from_config(fitted, "config").tokenize.fit_units == 10  # fitted into kmeans_path first
    # eval and generate on units, and `tts` sets, load no encoder: its paths need not exist
    assert EvalJob.from_config(with_value(eval_config.get_config(), "tokenize.encoder_path", "absent"), "config")
    speak_only = with_value(with_value(stinystories.get_config(), "synth.kind", "tts"), "tokenize.kmeans_path", "x")
    assert SynthesizeJob.from_config(speak_only, "config").synth.kind == "tts"
    stories = with_value(stinystories.get_config(), "tokenize.kmeans_path", "x.npy")
    assert error_of(SynthesizeJob, stories).startswith("config.tokenize.kmeans_path='x.npy'")


def test_replace_keeps_the_checks_and_the_key_names():
    settings = TokenizeJob.from_config(tokenize_mfcc.get_config(), "config").tokenize
    changed = settings.replace(data_path="a,b", max_seconds=3)
    assert (changed.data_path, changed.max_seconds, changed.mfcc) == ("a,b", 3.0, settings.mfcc)
    with pytest.raises(ValueError, match=r"^config\.tokenize\.batch_size=0: must be > 0$"):
        settings.replace(batch_size=0)


def test_the_unit_cache_folder_names_are_those_of_the_config_sections():
    """Digests pinned from the ConfigDict sections hashed before the settings were typed: caches stay valid."""
    eval_tokenize = TokenizeSettings.from_config(eval_config.get_config().tokenize, "tokenize")
    assert audio_units.cache_folder(eval_tokenize, "c") == Path("c/mhubert_25hz-486e1ce1c55e")
    prompts = eval_tokenize.replace(max_seconds=3.0)  # generation's prompt_seconds
    assert audio_units.cache_folder(prompts, "c") == Path("c/mhubert_25hz-40f903cff585")
    demo_tokenize = TokenizeSettings.from_config(demo.eval_stage("m").tokenize, "tokenize")
    assert audio_units.cache_folder(demo_tokenize, "c") == Path("c/mfcc-f4718fbd4b27")
    unchanged = demo_tokenize.replace(data_path="x", out_path="y", progress=False, num_workers=1, store=False)
    assert audio_units.cache_folder(unchanged, "c") == audio_units.cache_folder(demo_tokenize, "c")


def test_command_line_bad_value_is_one_error_line(tmp_path):
    command = [sys.executable, "-m", "slam_jax.main", "--config", str(ROOT / "configs" / "tokenize.py")]
    command += ["--config.tokenize.batch_size=0", f"--config.tokenize.data_path={tmp_path}", "--workdir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if not NATIVE_LOG.match(line)]
    assert lines == ["error: config.tokenize.batch_size=0: must be > 0"]
