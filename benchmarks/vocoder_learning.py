"""Does `mode: train_vocoder` learn? A small CodeHiFiGAN trained in stages on espeak speech, measured at each stage.

    python -m benchmarks.vocoder_learning [--sentences 40] [--steps 50,100,200,300] [--out DIR] [--json]

1. `--sentences` espeak-ng sentences (`SENTENCES`, one voice) are written as wavs (int16 at 22,050 Hz, as
   tests/speech_fixtures.synthesize makes them) and tokenised by the offline MFCC tokeniser (configs/tokenize_mfcc.py,
   `--units` k-means units fitted on them, 25 Hz); the vocoder job holds out `--valid-clips` of them
   (`data.valid_clips`, chosen by the job's seed).
2. `python -m slam_jax.main --config configs/vocoder.py` trains a small vocoder (`MODEL`; the paper's losses:
   LSGAN, feature matching, mel L1 x 45, duration MSE) to each of `--steps` in turn: every stage re-runs the
   same command with a larger `train.max_steps`, which resumes from the last checkpoint (the learning rate is
   per epoch, so the stages make one run) and re-exports WORKDIR/vocoder, copied to OUT/vocoders/step_S. The
   untrained generator (step 0) comes first: the same command with `max_steps` 0 and a time budget spent before
   the first step validates, checkpoints and exports the run's initial state, and the first stage resumes from
   it. The compiled step is kept in OUT/jax_cache between stages (JAX_COMPILATION_CACHE_DIR, unless already set).
3. Each stage's vocoder, the tokeniser's own inverse (`MfccInverseVocoder`) and the untrained generator vocode
   each held-out clip's units (expanded by their durations) whole, and are scored on:
   - mel L1: the mean L1 between the log-mels (HiFi-GAN's front end, the job's `mel` settings) of the generated
     and the real clip (peak-normalised to 0.95 as training sees it), as the job's `validation_mel_l1`, which the
     table also shows from WORKDIR/metrics.jsonl;
   - unit recovery: the generated audio, written as a 16 kHz wav at the real file's level (the peak
     normalisation undone), is read back and re-tokenised by the same tokeniser (its MFCC settings and
     centroids, `tokenize.build_encoder`); the share of frames whose unit equals the input's frame unit (by
     frame index, over the shorter length). The real audio re-tokenised is the ceiling (1.0: the measurement
     itself is right); "majority unit" is the share of the clips' most frequent unit, what audio that always
     re-tokenises as one unit (e.g. silence) would score;
   - MFCC distance: the mean Euclidean distance of those re-tokenised frames' MFCCs to the input unit's centroid,
     which falls as the audio nears the units before many frames cross into the right unit (the real audio's is
     the tokeniser's own quantisation error).
Seconds per training step are the steady-state ones of the job's own metrics (`audio_seconds_per_second` rows,
each stage's first step, which compiles or loads the step, left out); "train s" is the training commands' wall
time so far (start-up, initialisation, compilation, validation, checkpoints and export included). The table is
printed and written with every figure to OUT/learning.json.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import soundfile

from benchmarks import common
from configs import tokenize_mfcc
from configs import vocoder as vocoder_config
from slam_jax.models import kmeans
from slam_jax.paths import Path
from slam_jax.speech import audio, segments, tokenize, tts, vocoders
from slam_jax.speech import mel as mel_frontend
from slam_jax.training import vocoder as training

ROOT = Path(__file__).resolve().parents[1]
ESPEAK_RATE = tts.ESPEAK_RATE
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A speech language model learns from sound alone.",
    "Seven small boats sailed slowly across the quiet bay.",
    "Rain fell on the old town all through the night.",
    "Every morning the baker opens his shop at six.",
    "Bright stars shone above the silent mountains.",
    "Could you please pass me the salt and the pepper?",
    "My grandmother kept bees in a white wooden box behind the barn.",
    "Nobody expected the train to arrive so early.",
    "The children built a castle of sand before the tide came in.",
    "Turn left at the second light, then follow the river road.",
    "She played the violin while her brother sang softly.",
    "Why do cats always sit on the warmest chair?",
    "Thirty two people waited patiently in the long queue.",
    "The museum closes at five on Sundays.",
    "Heavy snow blocked the pass for nearly a week.",
    "He whispered a secret that made everyone laugh.",
    "Fresh bread and strawberry jam make a perfect breakfast.",
    "Lightning struck the tall oak tree during the storm.",
    "Our teacher read us a story about a clever little mouse.",
    "Yes.",
    "Good evening, and welcome to the show.",
    "The engineer measured the bridge twice before she signed the report.",
    "Purple flowers grew along the edge of the garden path.",
    "What time does the last bus leave tonight?",
    "A gentle breeze carried the smell of the sea.",
    "They painted the kitchen a cheerful shade of yellow.",
    "The old clock in the hall struck midnight.",
    "Please remember to lock the door when you leave.",
    "Monkeys chattered noisily high up in the jungle canopy.",
    "The pilot announced that we would land in twenty minutes.",
    "Fish swim in schools to protect themselves from sharks.",
    "I think it is going to rain this afternoon.",
    "Zebras and giraffes drank together at the muddy water hole.",
    "The library has thousands of books about history and science.",
    "Quickly, quietly, the thief climbed through the open window.",
    "Autumn leaves crunched under our boots on the forest trail.",
    "He fixed the bicycle with nothing but a spoon and some string.",
    "The orchestra tuned their instruments before the concert began.",
    "Water boils at one hundred degrees at sea level.",
    "Two owls hooted back and forth across the dark valley.",
    "She found an old map hidden inside the dusty piano.",
    "Marching bands paraded down the main street at noon.",
    "Can you hear the church bells ringing in the distance?",
)
NUM_UNITS = 64
VALID_CLIPS = 4
# A small CodeHiFiGAN (HiFi-GAN V1's upsampling to 640 samples per frame, 32 channels after the first conv) and
# discriminators at 1/8 of their channels: the size a CPU trains in minutes.
MODEL = {
    "data.segment_frames": 8,
    "model.embedding_dim": 32,
    "model.upsample_initial_channel": 32,
    "model.duration_predictor_dim": 32,
    "model.discriminator_divisor": 8,
    "train.per_device_batch_size": 4,
}
LEARNING_RATE = 2e-3  # HiFi-GAN's 2e-4 barely moves a short run
DEFAULT_STEPS = "50,100,200,300"
SPENT = "0.000001"  # a time budget (seconds) that is over before the first step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sentences", type=int, default=40, help=f"the first N of SENTENCES (at most {len(SENTENCES)})"
    )
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="training steps of each stage, increasing")
    parser.add_argument("--out", default="", help="output folder (default: a temporary one, removed)")
    parser.add_argument("--units", type=int, default=NUM_UNITS, help="MFCC k-means units")
    parser.add_argument("--valid-clips", type=int, default=VALID_CLIPS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a vocoder job setting beyond MODEL (dotted key, Python literal value), e.g. model.periods=(2,)",
    )
    parser.add_argument("--json", action="store_true", help="print learning.json instead of the table")
    args = parser.parse_args(argv)
    if not 2 <= args.sentences <= len(SENTENCES):
        parser.error(f"--sentences {args.sentences}: 2 to {len(SENTENCES)}")
    try:
        args.stages = [int(step) for step in args.steps.split(",") if step.strip()]
    except ValueError:
        parser.error(f"--steps {args.steps!r}: a comma list of step counts")
    if not args.stages or args.stages[0] <= 0 or args.stages != sorted(set(args.stages)):
        parser.error(f"--steps {args.steps!r}: increasing positive step counts")
    if not 1 <= args.valid_clips < args.sentences:
        parser.error(f"--valid-clips {args.valid_clips}: 1 to --sentences - 1")
    args.settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key.count(".") != 1 or not value:
            parser.error(f"--set {item!r}: KEY=VALUE with a dotted key (section.name)")
        try:
            args.settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args.settings[key] = value
    return args


def job_overrides(units: Path, args: argparse.Namespace) -> dict:
    """The vocoder job's settings beyond configs/vocoder.py (dotted keys)."""
    return {
        "data.train_path": str(units),
        "data.num_units": args.units,
        "data.valid_clips": args.valid_clips,
        **MODEL,
        "train.learning_rate": args.learning_rate,
        "train.time_budget": "",
        "train.eval_every": 0,  # the job validates once at the end of each stage
        "checkpoint.every_steps": args.stages[-1],  # and saves there
        "log.every_steps": 1,  # every step's speed (`seconds_per_step`)
        "log.tensorboard": False,
        "log.progress": "plain",
        **args.settings,
    }


def cli_value(value) -> str:
    """A setting as a `--config.KEY=` value: tuples as Python literals, the rest as text."""
    return repr(value) if isinstance(value, tuple) else str(value)


def vocoder_job(overrides: dict, max_steps: int) -> training.VocoderJob:
    """The job those settings make (to `max_steps`), as `mode: train_vocoder` reads it."""
    config = vocoder_config.get_config()
    for key, value in {**overrides, "train.max_steps": max_steps}.items():
        section, name = key.split(".")
        config[section][name] = value
    return training.VocoderJob.from_config(config, "config")


def run_cli(command: list[str], log: Path, env: dict | None = None) -> float:
    """Run a `python -m slam_jax.main` command from the repository root, output to `log`; its wall seconds."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "slam_jax.main", *command],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def make_units(out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """OUT/audio (the sentences as wavs) tokenised into OUT/units; the tokeniser's wall seconds."""
    folder = out / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    backend, voice = tts.EspeakBackend(), tts.Voice("en")
    for index, text in enumerate(SENTENCES[: args.sentences]):
        wave = np.round(backend.synthesize(text, voice) * 32768).astype(np.int16)
        soundfile.write(folder / f"s{index:02d}.wav", wave, ESPEAK_RATE)
    command = [
        "--config",
        "configs/tokenize_mfcc.py",
        f"--config.tokenize.data_path={folder}",
        f"--config.tokenize.out_path={out / 'units'}",
        f"--config.tokenize.fit_units={args.units}",
        "--config.tokenize.progress=False",
        "--workdir",
        str(out / "tokenize_work"),
    ]
    return out / "units", run_cli(command, out / "tokenize.log")


class Judge:
    """The held-out clips, the tokeniser that made their units, and the two scores of a vocoder on them."""

    def __init__(self, units: Path, job: training.VocoderJob):
        data = job.data
        entries = segments.read_entries(units / segments.FEATURES, data.num_units, data.audio_root)
        _, held_out = segments.split(entries, data.valid_clips, job.seed)  # the job's own split
        self.clips = segments.load_clips(held_out)  # units, durations, audio peak-normalised to 0.95
        self.raw = [audio.read_audio(clip.file_name).samples for clip in self.clips]  # as the tokeniser read it
        self.gains = [segments.PEAK / float(np.max(np.abs(raw))) for raw in self.raw]  # raw -> training level
        description = json.loads((units / tokenize.DESCRIPTION).read_text())
        settings = tokenize.TokenizeSettings.from_config(tokenize_mfcc.get_config().tokenize, "tokenize").replace(
            mfcc=description["mfcc"]
        )
        self.encoder = tokenize.build_encoder(settings)
        self.centroids = np.asarray(kmeans.load_centroids(Path(description["kmeans"])), np.float32)
        self.encoder.set_centroids(self.centroids)
        mel = job.mel
        arguments = {
            "n_fft": mel.n_fft,
            "num_mels": mel.num_mels,
            "sampling_rate": audio.SAMPLE_RATE,
            "hop_size": mel.hop_size,
            "win_size": mel.win_size,
            "fmin": mel.fmin,
            "fmax": mel.fmax_for_loss or None,
        }
        self._mel = jax.jit(lambda y: mel_frontend.mel_spectrogram(y, **arguments))
        counts = np.bincount(np.concatenate([clip.frame_units for clip in self.clips]), minlength=data.num_units)
        self.majority_share = float(counts.max() / counts.sum())

    @property
    def frame_units(self) -> list[np.ndarray]:
        return [clip.frame_units for clip in self.clips]

    def _batches(self, method, waves: list[np.ndarray]) -> list[np.ndarray]:
        rows = self.encoder.rows
        return [item for start in range(0, len(waves), rows) for item in method(waves[start : start + rows])]

    def recovery(self, waves: list[np.ndarray]) -> tuple[list[float], list[float]]:
        """Per clip: the share of frames whose re-tokenised unit is the input's (by index, over the shorter length),
        and the mean distance of those frames' MFCCs to the input unit's centroid."""
        shares, distances = [], []
        units_list, features_list = (
            self._batches(self.encoder.encode, waves),
            self._batches(self.encoder.features, waves),
        )
        for clip, units, features in zip(self.clips, units_list, features_list, strict=True):
            length = min(len(units), clip.num_frames)
            wanted = clip.frame_units[:length]
            shares.append(float(np.mean(units[:length] == wanted)) if length else 0.0)
            gaps = np.linalg.norm(features[:length] - self.centroids[wanted], axis=-1)
            distances.append(float(np.mean(gaps)) if length else float("inf"))
        return shares, distances

    def mel_l1(self, waves: list[np.ndarray]) -> list[float]:
        """Per clip: the job's validation mel L1 (both waveforms cut to the shorter, at the training level)."""
        errors = []
        for clip, wave in zip(self.clips, waves, strict=True):
            length = min(len(wave), len(clip.samples))
            real, fake = self._mel(clip.samples[None, :length]), self._mel(wave[None, :length])
            errors.append(float(jnp.mean(jnp.abs(real - fake))))
        return errors

    def score(self, waves: list[np.ndarray], raw_level: bool, folder: Path) -> dict:
        """Both scores of a vocoder's waveforms; `raw_level`: they are at the real files' level (the MFCC inverse),
        else at the training level (peak 0.95). Written to `folder` as 16 kHz wavs and read back to re-tokenise."""
        at_training = [wave * gain if raw_level else wave for wave, gain in zip(waves, self.gains, strict=True)]
        at_raw = [wave / gain for wave, gain in zip(at_training, self.gains, strict=True)]
        read_back = []
        for index, wave in enumerate(at_raw):
            path = vocoders.write_wav(folder / f"clip{index}.wav", wave, audio.SAMPLE_RATE)
            read_back.append(audio.read_audio(str(path)).samples)
        mel_l1, (recovery, distance) = self.mel_l1(at_training), self.recovery(read_back)
        return {
            "mel_l1": float(np.mean(mel_l1)),
            "unit_recovery": float(np.mean(recovery)),
            "centroid_distance": float(np.mean(distance)),
            "per_clip_mel_l1": mel_l1,
            "per_clip_unit_recovery": recovery,
            "per_clip_centroid_distance": distance,
        }


def validation_rows(workdir: Path) -> dict[int, float]:
    """{step: validation_mel_l1} of the job's metrics.jsonl."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["validation_mel_l1"] for row in rows if "validation_mel_l1" in row}


def seconds_per_step(workdir: Path, samples_per_step: int, stages: list[int]) -> list[float]:
    """Seconds of every step that is not a stage's first (which compiles the step or loads it from the cache)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    firsts = {1, *(steps + 1 for steps in stages)}
    return [
        samples_per_step / audio.SAMPLE_RATE / row["audio_seconds_per_second"]
        for row in rows
        if "audio_seconds_per_second" in row and row["step"] not in firsts
    ]


def table(result: dict) -> list[str]:
    lines = [
        f"{'vocoder':20s} {'steps':>5s} {'train s':>7s} {'mel L1':>7s} {'job mel L1':>10s} {'MFCC dist':>9s} "
        f"{'unit recovery':>13s} (per clip)",
    ]
    for row in result["rows"]:
        steps = "" if row["steps"] is None else str(row["steps"])
        train = "" if row.get("train_seconds") is None else f"{row['train_seconds']:.0f}"
        job = "" if row.get("validation_mel_l1") is None else f"{row['validation_mel_l1']:.4f}"
        clips = " ".join(f"{share:.2f}" for share in row["per_clip_unit_recovery"])
        lines.append(
            f"{row['name']:20s} {steps:>5s} {train:>7s} {row['mel_l1']:7.4f} {job:>10s} "
            f"{row['centroid_distance']:9.1f} {row['unit_recovery']:13.3f} ({clips})"
        )
    lines.append(f"majority unit (always the clips' most frequent unit): {result['majority_unit_share']:.3f}")
    lines.append("MFCC dist: mean distance of the re-tokenised frames' MFCCs to the input unit's centroid")
    timing = result["timing"]
    if timing["seconds_per_step"] is not None:
        lines.append(
            f"training: {timing['seconds_per_step']:.2f} s/step (median of {timing['steps_timed']} steps, mean "
            f"{timing['mean_seconds_per_step']:.2f}); the first "
            f"stage's start-up, compile, validation and export {timing['first_stage_overhead_seconds']:.0f} s"
        )
    lines.append(
        f"train s: wall seconds of the training commands so far; tokenising {timing['tokenize_seconds']:.0f} s; "
        f"total {timing['total_seconds']:.0f} s"
    )
    return lines


class Benchmark:
    """One run of the benchmark in OUT: the scored rows and the training commands' seconds."""

    def __init__(self, out: Path, args: argparse.Namespace, started: float):
        self.out, self.args, self.started = out, args, started
        self.units, self.tokenize_seconds = make_units(out, args)
        self.overrides = job_overrides(self.units, args)
        self.job = vocoder_job(self.overrides, args.stages[-1])
        self.judge = Judge(self.units, self.job)
        self.workdir = out / "train"
        self.rows: list[dict] = []
        self.stage_seconds: dict[int, float] = {}
        held_out = ", ".join(Path(clip.file_name).name for clip in self.judge.clips)
        print(
            f"{args.sentences} sentences -> {self.units} ({args.units} units, {self.tokenize_seconds:.0f} s); "
            f"{len(self.judge.clips)} held out: {held_out}",
            flush=True,
        )

    def add(self, name: str, steps: int | None, waves: list[np.ndarray], raw_level: bool, **extra) -> None:
        folder = self.out / "generated" / name.split(" (")[0].replace(" ", "_")
        row = {"name": name, "steps": steps, **extra, **self.judge.score(waves, raw_level, folder)}
        self.rows.append(row)
        print(
            f"[{time.perf_counter() - self.started:.0f} s] {name}: mel L1 {row['mel_l1']:.4f}, unit recovery "
            f"{row['unit_recovery']:.3f}",
            flush=True,
        )

    def train(self, steps: int) -> None:
        """Run the vocoder job to `steps` (0: its initial state), then score the vocoder it exported (copied to
        OUT/vocoders/step_S)."""
        command = ["--config", "configs/vocoder.py", "--workdir", str(self.workdir)]
        command += [f"--config.{key}={cli_value(value)}" for key, value in self.overrides.items()]
        command.append(f"--config.train.max_steps={steps}")
        if not steps:  # no step to take: the job validates, checkpoints and exports its initial state
            command.append(f"--config.train.time_budget={SPENT}")
        env = {"JAX_COMPILATION_CACHE_DIR": str(self.out / "jax_cache"), **os.environ}  # the stages share one
        self.stage_seconds[steps] = run_cli(command, self.out / f"train_{steps}.log", env)
        saved = self.out / "vocoders" / f"step_{steps}"
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(self.workdir / training.VOCODER_DIR, saved)
        waves = vocoders.load_vocoder(saved).vocode_batch(self.judge.frame_units)
        self.add(
            f"trained {steps} steps" if steps else "untrained (step 0)",
            steps,
            waves,
            raw_level=False,
            train_seconds=sum(self.stage_seconds.values()),
            validation_mel_l1=validation_rows(self.workdir).get(steps),
        )

    def result(self) -> dict:
        args, job = self.args, self.job
        hop = training.generator_config(job).hop_length
        manifest = json.loads((self.workdir / "run_manifest.json").read_text())["settings"]
        samples_per_step = manifest["train.global_batch_rows"] * job.data.segment_frames * hop  # as the job's rate
        per_step = seconds_per_step(self.workdir, samples_per_step, args.stages)
        steady = float(np.median(per_step)) if per_step else None
        first = args.stages[0]
        return {
            "sentences": args.sentences,
            "num_units": args.units,
            "valid_clips": [Path(clip.file_name).name for clip in self.judge.clips],
            "valid_frames": [clip.num_frames for clip in self.judge.clips],
            "train_clips": args.sentences - len(self.judge.clips),
            "stages": args.stages,
            "job": self.overrides | {"data.train_path": "OUT/units"},
            "majority_unit_share": self.judge.majority_share,
            "rows": self.rows,
            "timing": {
                "seconds_per_step": steady,  # the median: a busy spell of a shared machine moves it least
                "mean_seconds_per_step": float(np.mean(per_step)) if per_step else None,
                "steps_timed": len(per_step),
                "stage_seconds": self.stage_seconds,
                "first_stage_overhead_seconds": None if steady is None else self.stage_seconds[first] - steady * first,
                "tokenize_seconds": self.tokenize_seconds,
                "total_seconds": time.perf_counter() - self.started,
            },
            "machine": common.machine(),
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="vocoder_learning_")
    out = Path(args.out or scratch.name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        bench = Benchmark(out, args, started)
        judge = bench.judge
        bench.add("real audio", None, [clip.samples for clip in judge.clips], raw_level=False)
        inverse = vocoders.load_vocoder(bench.units)
        bench.add("MFCC inverse", None, inverse.vocode_batch(judge.frame_units), raw_level=True)
        for steps in [0, *args.stages]:
            bench.train(steps)
        result = bench.result()
        (out / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [common.describe(result["machine"]), *table(result)]
        print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
        print(f"wrote {out / 'learning.json'}")
    finally:
        if scratch is not None:
            scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
