"""Devices and numeric precision: which device a run uses, its autocast context, and the weights' dtype
for inference."""

from __future__ import annotations

import logging
import os

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

AMP_CHOICES = ("none", "bf16", "fp16")
# train.amp also takes "auto": the half precision the device computes natively, else fp32 (training_amp)
TRAIN_AMP_CHOICES = ("auto", *AMP_CHOICES)
# eval and predict's amp= (--amp) likewise: "auto" is the run's own precision where native (resolve_amp)
INFERENCE_AMP_CHOICES = TRAIN_AMP_CHOICES


def check_amp(amp: object) -> str:
    """``amp`` as eval and predict take it (``amp=``, ``--amp``), or a ConfigError naming it and the valid values:
    an unknown one was accepted, and the first image failed naming ``train.amp``."""
    if not isinstance(amp, str) or amp not in INFERENCE_AMP_CHOICES:
        raise ConfigError(f"amp={amp!r}; valid: {', '.join(INFERENCE_AMP_CHOICES)}")
    return amp


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU; else the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r}: give auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: give auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed-precision context for ``amp`` in none | bf16 | fp16."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"train.amp={amp!r}; valid: {', '.join(AMP_CHOICES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 (train.amp or --amp) needs a CUDA device; use bf16 on CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type`` ("cpu", "cuda") at this point, None where it is off or
    the device type has no autocast (e.g. "meta")."""
    if device_type not in ("cpu", "cuda"):
        return None
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except TypeError:  # PyTorch < 2.4: per-device functions without an argument
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


CPUINFO = "/proc/cpuinfo"  # Linux's CPU flags (a module constant: tests point it at other CPUs' files)


def native_precisions(device: torch.device) -> tuple[str, ...]:
    """The half precisions ``device`` computes natively: on CUDA bf16 where supported and fp16; on a CPU bf16
    where it has AVX-512 BF16 or AMX (Linux's CPU flags), else none (bf16 would be emulated, slower)."""
    if device.type == "cuda":
        # bf16 tensor cores from Ampere (compute capability 8) on; is_bf16_supported() also says yes for the
        # emulation on a V100 or T4, and asks about the current device rather than this one
        return ("bf16", "fp16") if torch.cuda.get_device_capability(device)[0] >= 8 else ("fp16",)
    if not os.path.exists(CPUINFO):
        return ()
    with open(CPUINFO) as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return ("bf16",) if {"avx512_bf16", "amx_bf16"} & set(flags) else ()


def resolve_amp(amp: str, run_amp: str | None, device: torch.device) -> str:
    """``amp="auto"`` (what eval and predict default to): the precision the run trained in, where ``device``
    runs it natively, else fp32 (``"none"``); any other of :data:`INFERENCE_AMP_CHOICES` as given (others are
    refused, :func:`check_amp`)."""
    if check_amp(amp) != "auto":
        return amp
    if run_amp == "auto":
        return training_amp("auto", device)
    return run_amp if run_amp in native_precisions(device) else "none"


def training_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` as training runs it. ``"auto"``: bf16 where ``device`` computes it natively (CPUs with
    AVX-512 BF16 or AMX, CUDA GPUs with bf16), fp16 on older CUDA GPUs, else fp32 (``"none"``). An explicit
    bf16 on a CPU without native bf16 is kept but warned about: emulated bf16 convolutions are many times
    slower than fp32 there (benchmarks/results/amp_emulated.json)."""
    if amp not in TRAIN_AMP_CHOICES:
        raise ConfigError(f"train.amp={amp!r}; valid: {', '.join(TRAIN_AMP_CHOICES)}")
    native = native_precisions(device)
    if amp == "auto":
        return native[0] if native else "none"
    if amp == "bf16" and device.type == "cpu" and "bf16" not in native:
        log.warning(
            "train.amp=bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 is emulated and many "
            "times slower than fp32; set train.amp=auto (bf16 only where native) or none"
        )
    return amp


def inference_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Weights' dtype for evaluation/prediction under ``amp``: half precision on CUDA, where autocast
    would otherwise cast every weight on every call; fp32 on CPU, where bf16 weights measured no faster
    (benchmarks/results/cuda)."""
    if device.type != "cuda" or amp == "none":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``, or None where it cannot be told. CUDA: the driver's figure plus
    what torch's caching allocator holds unused. CPU: the kernel's MemAvailable, or less where the process's
    control group (a container's memory limit, cgroup v2) leaves less."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limited = _cgroup_headroom()
    return limited if free is None else free if limited is None else min(free, limited)


def _cgroup_headroom(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """What this process's memory control group still allows (its limit less its usage; cgroup v2's
    ``memory.max``/``memory.current`` or v1's ``memory.limit_in_bytes``/``memory.usage_in_bytes``, in the group's
    folder or, inside a container, at the mount's root), or None without a limit."""
    try:
        with open(membership) as f:
            groups = dict(line.strip().split(":", 2)[1:] for line in f if line.count(":") >= 2)
    except (OSError, ValueError):
        return None
    for controller, limit_name, usage_name in (
        ("", "memory.max", "memory.current"),
        ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        group = groups.get(controller)
        if group is None:
            continue
        base = os.path.join(root, controller) if controller else root
        for folder in (os.path.join(base, group.lstrip("/")), base):
            try:
                with open(os.path.join(folder, limit_name)) as f:
                    limit = f.read().strip()
                with open(os.path.join(folder, usage_name)) as f:
                    usage = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
                return None
            return max(0, int(limit) - usage)
    return None
