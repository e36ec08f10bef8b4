"""Every command over the hostile-input corpus of ``tests/hostile.py`` (issue 9).

The contract, checked from outside: a bad input gives exit code != 0 (or a per-file
line on stderr with the run going on), one line naming the file or value, and no
``Traceback``; no command modifies or deletes a file it did not create: the hash of
every file under the case folder and under every fixture it read is unchanged.

Cases that can hang (a FIFO), eat memory (a 100000-pixel input size) or run code (a
malicious pickle), and every ``parse`` case (cheap: no torch), run in a subprocess with
a timeout; the rest run in-process with Click's ``CliRunner`` (separate stderr since
Click 8.2), where an uncaught exception counts as a traceback.

``RCNN_SLOW_HOSTILE=1`` adds the 8000x8000 PNG cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from rcnn.cli import main
from tests import hostile

SLOW = os.environ.get("RCNN_SLOW_HOSTILE") == "1"
REPO = Path(__file__).resolve().parents[1]
MEMORY_BOUND_GIB = float(os.environ.get("RCNN_HOSTILE_MEMORY_GIB", "4"))


@pytest.fixture
def inputs(request: pytest.FixtureRequest) -> hostile.Inputs:
    return hostile.Inputs(lambda kind: request.getfixturevalue(f"synth_{kind}"))


# --------------------------------------------------------------------------- hashing


def file_state(path: str) -> str:
    st = os.lstat(path)
    if os.path.islink(path):
        return "link:" + os.readlink(path)
    if hostile.is_special(Path(path)):  # a FIFO: opening it would block
        return f"special:{oct(st.st_mode)}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def snapshot(roots: list[Path]) -> dict[str, str]:
    """sha256 (or the link target) of every file under ``roots`` (files or folders)."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir() or root.is_symlink():
            if os.path.lexists(root):
                out[str(root)] = file_state(str(root))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, n)
                out[p] = file_state(p)
    return out


def make_writable(folder: Path) -> None:
    """Undo the read-only folders of a case, so that the temporary files can be removed."""
    for dirpath, _, _ in os.walk(folder):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    code: int | None
    stdout: str
    stderr: str
    error: str = ""  # an uncaught exception (in-process) or a timeout
    seconds: float = 0.0


def run_process(c: hostile.Case) -> Result:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("RCNN_DEBUG", None)
    limit = c.mem_limit

    def preexec() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "rcnn.cli", *c.args], cwd=c.cwd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=preexec)
    error = ""
    try:
        out, err = p.communicate(timeout=c.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the group of this one child (it may have started workers)
        out, err = p.communicate()
        error = f"timed out after {c.timeout:.0f} s"
    return Result(p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), error, time.perf_counter() - t)


def run_inprocess(c: hostile.Case, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.chdir(c.cwd)
    monkeypatch.delenv("RCNN_DEBUG", raising=False)
    t = time.perf_counter()
    res = CliRunner().invoke(main, c.args)
    error = ""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        error = "uncaught " + traceback.format_exception_only(type(res.exception), res.exception)[-1].strip()
    return Result(res.exit_code, res.stdout, res.stderr, error, time.perf_counter() - t)


# --------------------------------------------------------------------------- judging


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def traceback_line(text: str) -> str:
    """The exception line that ends the first traceback in ``text``."""
    ls = text.splitlines()
    start = next(i for i, ln in enumerate(ls) if "Traceback" in ln)
    for ln in ls[start + 1 :]:
        if ln and not ln.startswith((" ", "\t", "Traceback", "During handling", "The above exception")):
            return ln.strip()[:300]
    return ls[start].strip()


def judge(c: hostile.Case, r: Result, folder: Path, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Everything the run did wrong, one line each."""
    bad: list[str] = []
    if r.error:
        bad.append(r.error)
    for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
        if "Traceback" in text:
            bad.append(f"Traceback on {stream}: {traceback_line(text)}")
    err = lines(r.stderr)
    last = err[-1] if err else (lines(r.stdout)[-1] if lines(r.stdout) else "")
    if c.expect == "fail":
        if r.code == 0:
            bad.append("exit code 0 on bad input")
        if c.names is not None and c.names not in last:
            bad.append(f"last line does not name {c.names!r}: {last[:300]!r}")
    elif c.expect == "partial":
        if c.names is not None and not any(c.names in ln for ln in err):
            bad.append(f"no line on stderr names {c.names!r} (exit {r.code}; stderr ends {err[-1][:200] if err else ''!r}; "
                       f"stdout ends {lines(r.stdout)[-1][:200] if lines(r.stdout) else ''!r})")
    elif c.expect == "ok":
        if r.code != 0:
            bad.append(f"exit code {r.code}: {last[:300]!r}")
    elif c.expect == "safe":
        if r.code != 0 and c.names is not None and c.names not in last:
            bad.append(f"refused (exit {r.code}) without naming {c.names!r}: {last[:300]!r}")
    for s in c.also:
        if s not in r.stderr:
            bad.append(f"stderr does not name {s!r}")
    if c.check is not None and not r.error:
        problem = c.check()
        if problem:
            bad.append(problem)
    pwned = [p for root in {folder, Path(c.cwd or folder)} for p in root.rglob("PWNED")]
    if pwned:
        bad.append(f"a pickle ran code: {pwned[0]} exists")
    owned = tuple(str(p) + os.sep for p in c.owned)
    changed = sorted(p for p in before if p in after and after[p] != before[p] and not p.startswith(owned))
    deleted = sorted(p for p in before if p not in after and not p.startswith(owned))
    if changed:
        bad.append(f"{len(changed)} existing file(s) modified: {', '.join(changed[:4])}")
    if deleted:
        bad.append(f"{len(deleted)} existing file(s) deleted: {', '.join(deleted[:4])}")
    return bad


def describe(c: hostile.Case, r: Result) -> str:
    tail = "\n".join(lines(r.stderr)[-4:])
    return f"rcnn {' '.join(c.args)}\nexit {r.code} in {r.seconds:.1f} s; stderr ends:\n{tail}"


# --------------------------------------------------------------------------- tests


def log(c: hostile.Case, r: Result, bad: list[str]) -> None:
    """With RCNN_HOSTILE_LOG=FILE, append one JSON line per case (for reports)."""
    path = os.environ.get("RCNN_HOSTILE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": c.name, "expect": c.expect, "exit": r.code, "seconds": round(r.seconds, 2),
                                "last": (lines(r.stderr) or lines(r.stdout) or [""])[-1][:400], "problems": bad}) + "\n")


XFAIL = pytest.mark.xfail(strict=True, reason="issue 25: fixed after the refactor")
CASES = [pytest.param(n, marks=([pytest.mark.slow] if n in hostile.HEAVY else []) + ([XFAIL] if n in hostile.XFAIL else []))
         for n in hostile.case_names()]


@pytest.mark.parametrize("name", CASES)
def test_hostile_input(name: str, inputs: hostile.Inputs, tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    if name in hostile.SLOW_CASES and not SLOW:
        pytest.skip("slow: set RCNN_SLOW_HOSTILE=1")
    folder = tmp_path_factory.mktemp("case")  # not named after the test: case names must not leak into paths
    try:
        c = hostile.build_case(name, folder, inputs)
        roots = [folder, *inputs.roots()]
        before = snapshot(roots)
        r = run_process(c) if c.process else run_inprocess(c, monkeypatch)
        after = snapshot(roots)
        bad = judge(c, r, folder, before, after)
        log(c, r, bad)
    finally:
        make_writable(folder)
    assert not bad, f"{name}: " + "; ".join(bad) + "\n" + describe(c, r)


CORE_PROGRAM = """
import sys, time
from rcnn.core import Model
t = time.perf_counter()
try:
    Model.load(sys.argv[1])
    print("LOADED")
except BaseException as e:
    kind = "ValueError" if isinstance(e, ValueError) else "not-ValueError"
    print("RAISED", kind, type(e).__name__, (str(e).splitlines() or [""])[0][:200])
print("SECONDS", round(time.perf_counter() - t, 2))
"""


@pytest.mark.parametrize("name", hostile.CORE_CASES)
def test_core_model_load_refuses(name: str, tmp_path: Path) -> None:
    """``rcnn.core.Model.load`` raises ValueError at once on a bad file, without allocating what it declares."""
    path = hostile.core_corpus(tmp_path)[name]
    before = snapshot([tmp_path])

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * hostile.GiB, 2 * hostile.GiB))

    p = subprocess.run([sys.executable, "-c", CORE_PROGRAM, str(path)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, stdin=subprocess.DEVNULL, preexec_fn=preexec,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    out = p.stdout + p.stderr
    seconds = float(m.group(1)) if (m := re.search(r"SECONDS ([\d.]+)", out)) else None
    assert "RAISED ValueError" in out, f"{name}: expected ValueError, got {out.strip()[-400:]!r}"
    assert seconds is not None and seconds < 5, f"{name}: took {seconds} s"
    assert snapshot([tmp_path]) == before
    assert not list(tmp_path.rglob("PWNED"))


WRAPPER = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL)
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(r.returncode)
"""


@pytest.mark.skipif(not SLOW, reason="slow: set RCNN_SLOW_HOSTILE=1")
def test_detect_huge_png_memory_is_bounded(tmp_path: Path, synth_model: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    hostile.huge_png(big / "huge.png")
    before = snapshot([big])
    p = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "rcnn.cli", "detect", str(synth_model), str(big),
                        "--out", str(tmp_path / "run"), "--no-images", *hostile.DETECT_FAST],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    maxrss = int(re.search(r"MAXRSS_KIB (\d+)", p.stderr).group(1)) * 1024
    print(f"detect on an 8000x8000 PNG: peak memory {maxrss / hostile.GiB:.2f} GiB, exit {p.returncode}")
    assert maxrss < MEMORY_BOUND_GIB * hostile.GiB, f"peak memory {maxrss / hostile.GiB:.2f} GiB > {MEMORY_BOUND_GIB} GiB"
    assert snapshot([big]) == before
