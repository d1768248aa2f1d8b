"""Seconds from `make run` to a served dashboard page, on a second start (venv installed, demo ready).

Times `make demo` alone and then `make run` until http://localhost:PORT/ answers 200, `--repeat` times
each, then stops the server. Run it where the demo is already built (after one `make run`):

    .venv/bin/python -m bench.second_start --port 8599
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def time_make_demo() -> float:
    """Seconds one `make demo` takes (the readiness check when the demo exists)."""
    start = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def time_make_run(port: int, timeout: float) -> float:
    """Seconds from starting `make run` to the page at `port` answering HTTP 200; the server is stopped after."""
    env = os.environ | {"PORT": str(port)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "run"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"make run exited with status {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no page on port {port} after {timeout} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8599, help="port for the timed dashboard (not one in use)")
    p.add_argument("--repeat", type=int, default=3, help="timed starts of each kind")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the page before failing")
    args = p.parse_args(argv)
    time_make_demo()  # warm-up: the page cache, and a demo built if it was missing
    demo = [time_make_demo() for _ in range(args.repeat)]
    run = [time_make_run(args.port, args.timeout) for _ in range(args.repeat)]
    print(f"make demo (ready):       median {statistics.median(demo):.2f} s  {[round(t, 2) for t in demo]}")
    print(f"make run to HTTP 200:    median {statistics.median(run):.2f} s  {[round(t, 2) for t in run]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
