"""What made a run: the commit of the code and the CPU, recorded with its metrics so that a results page can say
which code and machine produced each number (a study may be carried across machines and commits)."""

import subprocess
from pathlib import Path


def code_commit(root: Path) -> str:
    """The short commit of the checkout at `root`, with `+changes` when tracked files differ from it; `unknown`
    outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and whether it computes bfloat16 natively (AVX512-BF16 or AMX), which decides whether
    bf16-mixed is fast or emulated on it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        import platform

        return platform.machine() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    isa = ", ".join(native) if native else "no native bf16"
    return f"{model or 'unknown CPU'} ({isa})"
