"""This machine's CPU, as the choices kerakit makes depend on it: its name, the ISA flags that pick kernels, its cores.

    cpu.describe()   # {"model": "Intel(R) Xeon(R) Processor", "flags": ["avx2", "avx512f", ...], "cores": 2,
                     #  "arch": "x86_64"}

The one owner of "what this CPU is": `kerakit bench` records it in a run's
deployment.json, `kerakit serve RUN` and `runtime.load(RUN)` compare it with
the machine they run on, and the benchmark harness names it beside each
figure. Reads /proc/cpuinfo (Linux); elsewhere the model is the platform's
and the flags are unknown (empty). Imports nothing of kerakit: any layer may ask.
"""

from __future__ import annotations

import os
import platform
from functools import cache

# The flags that change which kernels the runtimes (ONNX Runtime's MLAS, oneDNN in OpenVINO, XNNPACK) run, and so
# which artifact is fastest or even correct: int8 (VNNI: an int8 ONNX without reduce_range saturates on a CPU
# without it), bf16 and AMX tiles, and the vector width.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@cache  # read once per process: a check reads the model and flags of each file it judges
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _field(text: str, key: str) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.split(":", 1)[0].strip() == key and ":" in line), None)


def model() -> str:
    """The CPU's marketing name ("Intel(R) Xeon(R) Processor"); the platform's processor string off Linux."""
    return _field(_cpuinfo(), "model name") or platform.processor() or "unknown"


def flags() -> list[str]:
    """Which of FLAGS this CPU has, in FLAGS' order ([] where /proc/cpuinfo is not there)."""
    present = all_flags()
    return [f for f in FLAGS if f in present]


def all_flags() -> set[str]:
    """Every feature flag /proc/cpuinfo lists (empty where there is none)."""
    return set((_field(_cpuinfo(), "flags") or "").split())


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe() -> dict:
    """{"model", "flags", "cores", "arch"}: what a choice measured here was measured on."""
    return {"model": model(), "flags": flags(), "cores": cores(), "arch": platform.machine()}


def label(described: dict | None = None) -> str:
    """One line for a figure's CPU: "Intel(R) Xeon(R) Processor (avx2, avx512f, ...), 2 cores"."""
    d = described or describe()
    return f"{d['model']} ({', '.join(d['flags']) or 'none of ' + '/'.join(FLAGS)}), {d['cores']} core{'s' * (d['cores'] != 1)}"
