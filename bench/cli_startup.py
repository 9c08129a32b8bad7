"""Wall time of ``python -m lpirc ARGS`` (``lpirc --help`` by default), in this checkout and,
with ``--repo``, in another one (``git archive COMMIT | tar -x -C /tmp/before``), interleaved run
by run so that the machine's load hits both alike. Prints the minimum (the least disturbed
run: start-up is a fixed amount of work) and every run, and the load average before and after.

Usage (from the repository root)::

    python bench/cli_startup.py                          # lpirc --help, 5 runs
    python bench/cli_startup.py --repo /tmp/before       # and the same in another checkout
    python bench/cli_startup.py --runs 15 -- run --help  # another command's --help

Each run is a new interpreter started with the checkout first on PYTHONPATH and as its working
directory (``sys.executable``: the environment's packages are the same for both). The figures
in docs/architecture.md ("Start-up time") were made with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def once(repo: Path, args: list[str]) -> float:
    """Seconds from starting ``python -m lpirc ARGS`` in ``repo`` to its exit (which must be 0)."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lpirc", *args], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, help="another checkout to time beside this one")
    p.add_argument("--runs", type=int, default=5, help="runs per checkout (default 5)")
    p.add_argument("args", nargs="*", default=["--help"], help="lpirc's arguments (after --)")
    a = p.parse_args()
    repos = {"this": REPO, **({"other": a.repo.resolve()} if a.repo else {})}
    times: dict[str, list[float]] = {k: [] for k in repos}
    load = os.getloadavg()
    for _ in range(a.runs):
        for name, repo in repos.items():
            times[name].append(once(repo, a.args))
    print(f"lpirc {' '.join(a.args)}: wall seconds, {a.runs} runs each, interleaved, on "
          f"{os.cpu_count()} CPUs; load average {load[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for name, repo in repos.items():
        v = times[name]
        print(f"  {name:5s} {repo}: min {min(v):.3f}  runs " + " ".join(f"{x:.3f}" for x in v))


if __name__ == "__main__":
    main()
