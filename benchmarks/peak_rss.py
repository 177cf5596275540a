"""Run a command and print one JSON line: its wall seconds, exact peak RSS and sampled peak anonymous RSS.

    python -m benchmarks.peak_rss COMMAND [ARGS...]

Run this small process as the parent of the command to measure: Linux carries a process's peak RSS across
`exec`, so a command started straight from a large process (one that built a model, say) would report that
process's size. The command's stdout goes to this process's stderr, leaving stdout for the JSON line.
Anonymous RSS (memory not backed by a file, so excluding a memory-mapped checkpoint's pages) is sampled
every 50 ms from /proc, so it can miss a spike shorter than that.
"""

import json
import resource
import subprocess
import sys
import threading
import time

_POLL_SECONDS = 0.05


def anon_rss(pid: int) -> int:
    """The process's resident bytes not backed by a file; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(command: list[str]) -> dict:
    """Run `command` to completion; its exit code, wall seconds, peak RSS and sampled peak anonymous RSS."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)
    peak_anon = 0
    finished = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not finished.wait(_POLL_SECONDS):
            peak_anon = max(peak_anon, anon_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    elapsed = time.perf_counter() - start
    finished.set()
    sampler.join()
    return {
        "returncode": process.returncode,
        "seconds": elapsed,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "peak_anon_rss_bytes": peak_anon,
    }


def main() -> int:
    result = measure(sys.argv[1:])
    print(json.dumps(result))
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
