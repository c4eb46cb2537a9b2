"""What machine a benchmark ran on, for its results (figures are compared only within one machine)."""

from __future__ import annotations

import platform
from pathlib import Path


def read_cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def first_processor(cpuinfo: str | None) -> dict[str, str]:
    """The first processor's block of a /proc/cpuinfo text as ``{key: value}`` (empty for None or no block)."""
    fields: dict[str, str] = {}
    for line in (cpuinfo or "").splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or ``cpuinfo``), else what the platform module says."""
    name = first_processor(read_cpuinfo() if cpuinfo is None else cpuinfo).get("model name")
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_generation(cpuinfo: str | None = None) -> str:
    """Vendor, family and model numbers of the first processor in /proc/cpuinfo (or ``cpuinfo``), e.g.
    ``"AuthenticAMD family 25 model 17"``: a virtual machine's model name can be as bare as "AMD EPYC", and these
    numbers tell its generation (AMD's family 25 is Zen 3 and Zen 4, family 26 Zen 5)."""
    fields = first_processor(read_cpuinfo() if cpuinfo is None else cpuinfo)
    vendor, family, model = (fields.get(key) for key in ("vendor_id", "cpu family", "model"))
    if vendor is None and family is None and model is None:
        return "unknown"
    return f"{vendor or '?'} family {family or '?'} model {model or '?'}"


def cpu_features(cpuinfo: str | None = None) -> str:
    """The vector and matrix units that decide the speed of convolutions here, e.g. ``"AVX2; no AVX-512 BF16, no
    AMX"``: the same model name ("AMD EPYC") has come with and without AVX-512."""
    flags = first_processor(read_cpuinfo() if cpuinfo is None else cpuinfo).get("flags")
    if flags is None:
        return "unknown"
    flags = set(flags.split())
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "AVX-512 BF16" if "avx512_bf16" in flags else "no AVX-512 BF16"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{widest}; {bf16}, {amx}"


def machine_info() -> dict[str, str]:
    """The ``cpu``, ``cpu_generation``, ``cpu_features`` and ``machine`` entries a benchmark's results open with
    (/proc/cpuinfo read once)."""
    cpuinfo = read_cpuinfo()
    return {
        "cpu": cpu_model(cpuinfo),
        "cpu_generation": cpu_generation(cpuinfo),
        "cpu_features": cpu_features(cpuinfo),
        "machine": platform.machine(),
    }
