"""What machine a benchmark ran on, for its results (figures are compared only within one machine)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_generation(cpuinfo: str | None = None) -> str:
    """Vendor, family and model numbers of the first processor in /proc/cpuinfo (or ``cpuinfo``), e.g.
    ``"AuthenticAMD family 25 model 17"``: a virtual machine's model name can be as bare as "AMD EPYC", and these
    numbers tell its generation (AMD's family 25 is Zen 3 and Zen 4, family 26 Zen 5)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and fields:
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        if key.strip() in ("vendor_id", "cpu family", "model"):
            fields[key.strip()] = value.strip()
    if not fields:
        return "unknown"
    return f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def machine_info() -> dict[str, str]:
    """The ``cpu``, ``cpu_generation``, ``cpu_features`` and ``machine`` entries a benchmark's results open with."""
    return {
        "cpu": cpu_model(),
        "cpu_generation": cpu_generation(),
        "cpu_features": cpu_features(),
        "machine": platform.machine(),
    }


def cpu_features() -> str:
    """The vector and matrix units that decide the speed of convolutions here, e.g. ``"AVX2; no AVX-512 BF16, no
    AMX"``: the same model name ("AMD EPYC") has come with and without AVX-512."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags else "no AVX-512 BF16"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{widest}; {bf16}, {amx}"
