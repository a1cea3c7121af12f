"""Sample a running process with py-spy and summarise where its threads spend their CPU.

py-spy attaches from outside (no change to the process, ``--nonblocking`` so the sampled
process is never paused) and writes collapsed stacks (``-f raw``: ``frame;frame;... count``).
The summary keeps, per thread, the share of samples of the hottest frames ("self": the frame
on top of the stack) and of the hottest functions of our own code ("inclusive": anywhere in
the stack), which is what says which function to make faster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import REPO

PY_SPY = REPO / ".venv" / "bin" / "py-spy"
_LOCATION = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
OWN = ("bridge/", "bench/", "tests/")


def available() -> str | None:
    found = PY_SPY if PY_SPY.exists() else shutil.which("py-spy")
    return str(found) if found else None


def record(pid: int, seconds: float, out: Path, rate: int = 97) -> bool:
    """Sample ``pid`` for ``seconds`` into ``out``; False (and no file) if py-spy cannot."""
    binary = available()
    if binary is None:
        return False
    argv = [binary, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}"]
    argv += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking"]
    argv += ["--output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return done.returncode == 0 and out.exists()


def start(pid: int, seconds: float, out: Path, rate: int = 97) -> subprocess.Popen[bytes] | None:
    """Like :func:`record`, in the background: ``wait()`` on the result, then :func:`summarise`."""
    binary = available()
    if binary is None:
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}"]
    argv += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking"]
    argv += ["--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class ThreadProfile:
    name: str
    samples: int = 0
    self_frames: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


@dataclass
class Profile:
    samples: int
    threads: list[ThreadProfile]
    seconds: float = 0.0
    rate: int = 97

    def busy(self, thread: ThreadProfile) -> float:
        """The thread's samples over the samples of a thread busy all the time (0..1)."""
        possible = self.seconds * self.rate
        return thread.samples / possible if possible else 0.0


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)`` with our paths kept relative."""
    match = _LOCATION.match(frame)
    if not match:
        return frame
    path = match["file"]
    for own in OWN:
        at = path.find(own)
        if at >= 0:
            return f"{match['func']} ({path[at:]}:{match['line']})"
    return f"{match['func']} ({Path(path).name}:{match['line']})"


def _function(frame: str) -> str:
    """A frame without its line number, so a function's lines add up."""
    return re.sub(r":\d+\)$", ")", frame)


def _thread_name(root: str) -> str:
    # "thread (0x7f...)" or "thread (123): MainThread" -> a name without the changing id
    name = root.split(":", 1)[1].strip() if ":" in root else "thread"
    return re.sub(r"_\d+$", "", name) or "thread"


def summarise(path: Path, seconds: float = 0.0, rate: int = 97) -> Profile:
    threads: dict[str, ThreadProfile] = {}
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        name = _thread_name(frames[0]) if frames[0].startswith("thread") else "thread"
        body = [_short(f) for f in frames[1:] if not f.startswith(("process", "thread"))]
        if not body:
            continue
        entry = threads.setdefault(name, ThreadProfile(name))
        entry.samples += count
        total += count
        entry.self_frames[body[-1]] += count
        seen = {_function(f) for f in body if f.split(" (", 1)[-1].startswith(OWN)}
        for function in seen:
            entry.inclusive[function] += count
    ordered = sorted(threads.values(), key=lambda t: -t.samples)
    return Profile(total, ordered, seconds, rate)


def table(profile: Profile, top: int = 8) -> list[str]:
    """Markdown lines: per thread, its share of the samples, top self frames, top own functions.

    Shares are of all samples of the process (py-spy counts a thread blocked in a system call
    such as fsync as active, so "busy" is an upper bound on CPU use).
    """
    if not profile.samples:
        return ["(no samples)"]
    lines: list[str] = []
    for thread in profile.threads:
        share = thread.samples / profile.samples
        if share < 0.03:
            continue
        busy = (
            f", on CPU or in a system call {profile.busy(thread):.0%} of the time"
            if profile.seconds
            else ""
        )
        lines.append(f"*{thread.name}*: {share:.0%} of the samples{busy}")
        lines.append("")
        lines.append("| self % | frame | | inclusive % | our function |")
        lines.append("|---:|---|---|---:|---|")
        selfs = thread.self_frames.most_common(top)
        # Frames in (nearly) every stack of the thread (main, run loops) tell nothing.
        incl = [
            (name, count)
            for name, count in thread.inclusive.most_common()
            if count < 0.8 * thread.samples and not name.startswith(("<module>", "main ("))
        ][:top]
        for index in range(max(len(selfs), len(incl))):
            left = selfs[index] if index < len(selfs) else None
            right = incl[index] if index < len(incl) else None
            lines.append(
                "| "
                + (f"{left[1] / profile.samples:.1%} | `{left[0]}`" if left else " | ")
                + " | | "
                + (f"{right[1] / profile.samples:.1%} | `{right[0]}`" if right else " | ")
                + " |"
            )
        lines.append("")
    return lines
