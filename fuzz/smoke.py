"""Short fuzz campaign over every harness; exits non-zero on any crash (``make fuzz-smoke``).

Usage: ``python fuzz/smoke.py [--seconds N] [harness ...]`` (default: every
``fuzz/fuzz_*.py`` for 20 s each). Each harness runs as its own libFuzzer process from its
seed corpus and its regression inputs, growing ``fuzz/.work/<harness>/``; its output goes
to ``fuzz/.work/logs/<harness>.log``. Contract:

- exit 0: every harness ran its time without a crash, a timeout (``-timeout=10`` per
  input) or running out of memory; a summary line per harness (runs, coverage, exec/s);
- exit 1: a harness failed; its log tail (with the Python traceback) and the crash input
  (path and base64, so CI logs are enough to reproduce) are printed, the rest still run;
- atheris missing: exit 1 when ``CI`` is set (anything but ``""``/``0``/``false``/``no``),
  else a skip message and exit 0. Atheris is only imported by the harness processes.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
WORK = FUZZ / ".work"
#: libFuzzer's final status line: "#1234 DONE cov: 567 ft: 890 corp: ... exec/s: 61 ..."
_STATS = re.compile(rb"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", re.MULTILINE)
_ARTIFACT = re.compile(rb"Test unit written to (\S+)")
#: startup (instrumenting imports), the seed pass and the exit can take this long on top
STARTUP_ALLOWANCE = 120.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def run_harness(name: str, seconds: int) -> tuple[bool, str]:
    """Fuzz ``name`` for ``seconds``; returns (ok, one summary line)."""
    work, logs, crashes = WORK / name, WORK / "logs", FUZZ / "crashes" / name
    for folder in (work, logs, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = [str(d) for d in (FUZZ / "corpus" / name, FUZZ / "regressions" / name) if d.is_dir()]
    command = [
        sys.executable, str(FUZZ / f"{name}.py"), str(work), *seeds,
        f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={crashes}/",
    ]  # fmt: skip
    log = logs / f"{name}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        try:
            code: int | str = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + STARTUP_ALLOWANCE).returncode
        except subprocess.TimeoutExpired:
            code = "hung"
    elapsed = time.monotonic() - start
    text = log.read_bytes()
    stats = _STATS.findall(text)
    runs, cov, ft, rate = (int(v) for v in stats[-1]) if stats else (0, 0, 0, 0)
    ok = code == 0
    line = f"{name:24} {'ok' if ok else 'FAILED (' + str(code) + ')':12} {runs:>8} runs  cov {cov:>5}  ft {ft:>6}  {rate:>5} exec/s  {elapsed:5.0f} s"
    if not ok:
        _report_failure(name, log, text)
    return ok, line


def _report_failure(name: str, log: Path, text: bytes) -> None:
    print(f"\n=== {name} failed; last lines of {log.relative_to(FUZZ.parent)}:", flush=True)
    lines = [ln for ln in text.decode("utf-8", "replace").splitlines() if not ln.startswith("INFO: Instrumenting")]
    print("\n".join(lines[-60:]))
    for match in _ARTIFACT.findall(text):
        path = Path(match.decode())
        if path.is_file():
            data = path.read_bytes()
            print(f"crash input {path} ({len(data)} bytes), base64:\n{base64.b64encode(data).decode()}")
            print(f"reproduce: .venv/bin/python fuzz/{name}.py {path}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="campaign length per harness (default 20)")
    parser.add_argument("harnesses", nargs="*", help="harness names (default: every fuzz/fuzz_*.py)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("atheris") is None:
        if in_ci():
            print("fuzz-smoke: atheris is not installed (pip install -e '.[fuzz]'); CI must fuzz", file=sys.stderr)
            return 1
        print("fuzz-smoke: skipped, atheris is not installed (pip install -e '.[fuzz]')")
        return 0
    names = args.harnesses or sorted(p.stem for p in FUZZ.glob("fuzz_*.py"))
    unknown = [n for n in names if not (FUZZ / f"{n}.py").is_file()]
    if unknown:
        parser.error(f"no such harness: {', '.join(unknown)}")
    print(f"fuzz-smoke: {len(names)} harnesses, {args.seconds} s each", flush=True)
    start = time.monotonic()
    results = []
    for name in names:
        ok, line = run_harness(name, args.seconds)
        results.append(ok)
        print(line, flush=True)
    failed = results.count(False)
    print(f"fuzz-smoke: {len(names) - failed} ok, {failed} failed, {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
