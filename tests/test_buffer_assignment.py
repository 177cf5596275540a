"""benchmarks/buffer_assignment.py reads XLA's buffer-assignment dump as memory_analysis() reports a compiled
program (tests/test_compile_vocoder.py checks it against a real compile to the byte): its rules on a dump written
by hand in XLA's format, and `benchmarks.compile_genppl --buffer-assignment` on a GPU (equal to the compiled
figure) and a TPU (the vocoder's figures without its code generation)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import buffer_assignment

ROOT = Path(__file__).resolve().parents[1]

DUMP = """BufferAssignment:
allocation 0: size 512, constant:
 value: <89 constant @0> (size=512,offset=0): f32[]{:T(128)}
allocation 1: size 4000, parameter 0, shape |f32[1000]| at ShapeIndex {}, maybe-live-out:
 value: <1 state @0> (size=4000,offset=0): f32[1000]
allocation 2: size 800, parameter 1, shape |f32[200]| at ShapeIndex {}:
 value: <2 batch @0> (size=800,offset=0): f32[200]
allocation 3: size 64, maybe-live-out:
 value: <3 loss @0> (size=64,offset=0): f32[]
allocation 4: size 512, output shape is |(f32[1000], f32[])|, maybe-live-out:
 value: <4 tuple @0> (size=512,offset=0): (f32[1000], f32[])
allocation 5: size 9000, preallocated-temp:
 value: <5 fusion @0> (size=9000,offset=0): f32[2250]
allocation 6: size 300, thread-local:
 value: <6 local @0> (size=300,offset=0): f32[75]
allocation 7: size 7000, color 1, preallocated-temp:
 value: <7 vmem @0> (size=7000,offset=0): f32[1750]
allocation 8: size 20, color 2, preallocated-temp:
 value: <8 smem @0> (size=20,offset=0): s32[5]
"""


def write(directory, name: str, text: str, finished: bool = True) -> None:
    (directory / f"{name}.after_optimizations-buffer-assignment.txt").write_text(text)
    if finished:
        (directory / f"{name}.after_optimizations-memory-usage-report.txt").write_text("Total bytes: 1\n")


def test_figures_count_main_memory_as_the_compiled_memory_analysis():
    figures = buffer_assignment.figures(DUMP)
    assert figures == {
        "argument_bytes": 4000 + 800,  # both parameters
        "output_bytes": 4000 + 64 + 512,  # what may be live out, the output tuple included
        "alias_bytes": 4000,  # the donated state, updated in place
        "temp_bytes": 9000,  # the preallocated buffer only: not a kernel's thread-local ones, not VMEM / SMEM
        "constant_bytes": 512,
        "bytes_per_device": 4800 + 9000 + 4576 - 4000,
    }


def test_the_largest_finished_dump_of_the_named_program_is_read(tmp_path, capsys):
    write(tmp_path, "module_0001.jit_traced.cl_1", DUMP)
    write(tmp_path, "module_0002.jit_traced.cl_1", DUMP.replace("size 9000, pre", "size 90000, pre"), finished=False)
    write(tmp_path, "module_0003.jit_other.cl_1", DUMP.replace("size 9000, pre", "size 900000, pre"))
    write(tmp_path, "module_0004.jit_traced.sm_9.0a_gpu", DUMP.replace("size 9000, pre", "size 10000, pre"))
    found = buffer_assignment.largest(tmp_path, "traced")
    # module 2 is still being written (no memory report after it yet); module 3 is another program
    assert found["file"] == "module_0004.jit_traced.sm_9.0a_gpu.after_optimizations-buffer-assignment.txt"
    assert found["temp_bytes"] == 10000
    assert buffer_assignment.largest(tmp_path, "absent") is None
    assert buffer_assignment.main([str(tmp_path), "--program", "traced", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["temp_bytes"] == 10000
    assert buffer_assignment.main([str(tmp_path), "--program", "absent"]) == 1
    assert "no finished buffer assignment of program 'absent'" in capsys.readouterr().out


def genppl_report(*arguments: str) -> tuple[dict, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "benchmarks.compile_genppl", "--sizes", "tiny", *arguments, "--json"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout), done


def test_a_genppl_programs_buffer_assignment_is_its_compiled_memory_on_a_gpu():
    report, done = genppl_report("--target", "h100", "--programs", "durations", "--buffer-assignment", "also")
    program = report["programs"]["durations"]
    assert done.returncode == 0 and program["compiled"] is True, program
    assert program["buffer_assignment"]["bytes_per_device"] == program["bytes_per_device"] > 0


def test_the_tpu_vocode_programs_buffer_assignment_comes_without_its_code_generation():
    report, done = genppl_report("--target", "tpu-v5e", "--programs", "vocode", "--buffer-assignment", "only")
    program = report["programs"]["vocode"]
    assert done.returncode == 0 and program["compiled"] is False and "error" not in program, program
    found = program["buffer_assignment"]
    assert found["file"].split(".")[1] == "jit_waveforms" and found["fits"]
    assert found["bytes_per_device"] == found["argument_bytes"] + found["temp_bytes"] + found["output_bytes"] > 0


def test_buffer_assignment_reads_one_program_and_says_so_in_one_line():
    command = [sys.executable, "-m", "benchmarks.compile_genppl", "--buffer-assignment", "only"]
    done = subprocess.run(
        [*command, "--programs", "vocode,score"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2 and not done.stdout
    assert "--buffer-assignment reads one program: --programs one of generate, vocode," in done.stderr.splitlines()[-1]
