"""Which device and precision a run uses: the one place that turns "auto" into a choice.

``trainer.precision: auto`` picks, for the device the trainer runs on and the family it trains:

* on a GPU, ``bf16-mixed`` where the GPU supports bf16 (Ampere and newer), else ``16-mixed``;
* on a CPU, ``bf16-mixed`` only where the CPU has native bf16 instructions (x86: AVX512-BF16 or
  AMX-BF16; Arm: the BF16 extension) *and* bf16 autocast was measured to train that family
  faster (:func:`cpu_bf16_speedups`), else ``32-true``. Without native bf16 instructions oneDNN
  emulates bf16 and a training step is many times slower; with them, the gain depends on how much
  of a family's step is matmuls and convolutions, so it is measured per family, not assumed.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from genbench.errors import GenbenchError

DEVICE_CHOICES = ("auto", "cpu", "cuda")

#: the value of ``trainer.precision`` that asks genbench to choose
AUTO_PRECISION = "auto"

#: /proc/cpuinfo flags of x86 CPUs that run bf16 matmuls/convolutions natively (oneDNN uses them)
X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: /proc/cpuinfo "Features" of Arm CPUs with the BF16 extension (BFDOT/BFMMLA; SVE's variant)
ARM_BF16_FLAGS = ("bf16", "svebf16")


def cpu_bf16_speedups() -> dict[str, float]:
    """bf16-mixed / fp32 training images/s per family on a CPU with native bf16: each family's
    ``FamilySpec.cpu_bf16_speedup``, as ``scripts/perf_precision.py`` measured it (genbench's
    LightningModule step at the cpu benchmark's sizes, one thread, median of interleaved rounds;
    docs/performance.md, "Precision on the CPU"). A family that declares none (e.g. one from another
    package) trains in fp32 under ``auto`` on a CPU: no gain has been shown for it."""
    from genbench.registry import families

    return {name: spec.cpu_bf16_speedup for name, spec in families().items() if spec.cpu_bf16_speedup}


#: the least measured speed-up for which ``auto`` picks bf16 on a CPU: below it the gain is within
#: the run-to-run noise of a shared machine and not worth bf16's coarser arithmetic
CPU_BF16_MIN_SPEEDUP = 1.10


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when one is visible, else the CPU), ``cpu`` or ``cuda``; asking for a GPU
    that is not there is a clear error rather than a CUDA traceback later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICE_CHOICES:
        raise GenbenchError(f"Unknown device '{name}': use one of {', '.join(DEVICE_CHOICES)}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenbenchError("device=cuda but no GPU is visible: use device=auto or cpu.")
    return torch.device(name)


# --- native bf16 on the CPU -----------------------------------------------------------------------
@dataclass(frozen=True)
class CpuBf16:
    """Whether the CPU computes bf16 natively, and the evidence (what a log line can show).

    Attributes:
        native: bf16 matmuls/convolutions run on bf16 instructions (not emulated in fp32).
        evidence: the flags found or the probe used, e.g. ``"amx_bf16 avx512_bf16 in /proc/cpuinfo"``.
    """

    native: bool
    evidence: str

    def __str__(self) -> str:
        return f"{'native' if self.native else 'no native'} bf16 ({self.evidence})"


def bf16_from_flags(flags: Iterable[str], machine: str, source: str = "/proc/cpuinfo") -> CpuBf16:
    """Native bf16 from a CPU's feature flags (``/proc/cpuinfo``'s ``flags`` on x86, ``Features``
    on Arm) and its architecture (``platform.machine()``). A pure function, so the decision is
    testable with any flag set on any machine."""
    have = set(flags)
    arch = machine.lower()
    if arch in ("aarch64", "arm64"):
        wanted = ARM_BF16_FLAGS
    elif arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        wanted = X86_BF16_FLAGS
    else:
        return CpuBf16(False, f"{machine}: no known bf16 instructions")
    found = sorted(f for f in wanted if f in have)
    if found:
        return CpuBf16(True, f"{' '.join(found)} in {source}")
    return CpuBf16(False, f"none of {' '.join(wanted)} in {source}")


def _cpuinfo_flags(text: str) -> list[str] | None:
    """The first ``flags`` (x86) or ``Features`` (Arm) line of /proc/cpuinfo, split; None if absent."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return value.split()
    return None


def _torch_probe(machine: str) -> CpuBf16:
    """Where there is no /proc/cpuinfo: PyTorch's own CPUID probes on x86 (the ones its kernels
    dispatch on), ``sysctl hw.optional.arm.FEAT_BF16`` on an Apple-silicon Mac, else
    ``torch.backends.cpu.get_cpu_capability()`` for the record (it names vector widths, not bf16)."""
    arch = machine.lower()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    if arch in ("x86_64", "amd64"):
        found = [flag for flag, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)()]
        return bf16_from_flags(found, machine, source="torch.cpu's CPUID probes")
    if arch == "arm64" and platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        return bf16_from_flags(["bf16"] if out == "1" else [], machine, source="sysctl hw.optional.arm.FEAT_BF16")
    return CpuBf16(False, f"{machine}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


@functools.cache
def cpu_bf16_support() -> CpuBf16:
    """This machine's :class:`CpuBf16`: /proc/cpuinfo's flags where Linux gives them (what the
    kernel says the CPU *and* the hypervisor expose), else :func:`_torch_probe`. Cached: the CPU
    does not change during a run."""
    machine = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    try:
        flags = _cpuinfo_flags(cpuinfo.read_text()) if cpuinfo.exists() else None
    except OSError:
        flags = None
    if flags is not None:
        return bf16_from_flags(flags, machine)
    return _torch_probe(machine)


# --- the precision ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionChoice:
    """What ``trainer.precision: auto`` became, and why (the info line a run logs)."""

    precision: str
    reason: str


def choose_precision(
    device_type: str,
    family: str | None,
    cpu_bf16: CpuBf16,
    cuda_bf16: bool = False,
    speedups: dict[str, float] | None = None,
    min_speedup: float = CPU_BF16_MIN_SPEEDUP,
) -> PrecisionChoice:
    """The precision ``auto`` means on ``device_type`` (``"cpu"`` or ``"cuda"``) for ``family``.
    Pure (the hardware comes in as arguments), so every branch is testable on any machine.

    GPU: bf16-mixed where the GPU supports it, else 16-mixed. CPU: bf16-mixed only with native
    bf16 and a measured speed-up of at least ``min_speedup`` for the family (``speedups``,
    default :func:`cpu_bf16_speedups`), else 32-true."""
    if device_type == "cuda":
        if cuda_bf16:
            return PrecisionChoice("bf16-mixed", "the GPU supports bf16")
        return PrecisionChoice("16-mixed", "the GPU does not support bf16")
    if not cpu_bf16.native:
        return PrecisionChoice("32-true", f"the CPU has {cpu_bf16}: bf16 would be emulated, many times slower")
    table = cpu_bf16_speedups() if speedups is None else speedups
    gain = table.get(family or "")
    if gain is None:
        return PrecisionChoice("32-true", f"the CPU has {cpu_bf16}, but bf16 was never measured for family {family}")
    if gain < min_speedup:
        return PrecisionChoice(
            "32-true",
            f"the CPU has {cpu_bf16}, but bf16-mixed trained {family} only {gain:.2f}x as fast as fp32 "
            f"when measured (auto wants at least {min_speedup:.2f}x)",
        )
    return PrecisionChoice(
        "bf16-mixed",
        f"the CPU has {cpu_bf16} and bf16-mixed trained {family} {gain:.2f}x as fast as fp32 when measured",
    )


def accelerator_device_type(accelerator: str | None) -> str:
    """The device type a Trainer with ``trainer.accelerator`` trains on: ``cuda`` or ``cpu``."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def check_accelerator(accelerator: str | None) -> None:
    """Stop before anything is built when ``trainer.accelerator`` asks for a GPU this machine does not
    have: Lightning's own message ("No supported gpu backend found!") names no way out."""
    if accelerator_device_type(accelerator) == "cuda" and not torch.cuda.is_available():
        raise GenbenchError(
            f"trainer.accelerator={accelerator} but PyTorch sees no GPU here (torch.cuda.is_available() is False): "
            "train on the CPU with trainer=cpu (trainer=ddp_cpu for several processes)"
            + (
                f", or install a CUDA build of torch (this one, {torch.__version__}, has none)."
                if torch.version.cuda is None
                else ", or check the GPU's driver and CUDA_VISIBLE_DEVICES."
            )
        )


def resolve_precision(precision: object, accelerator: str | None, family: str | None) -> PrecisionChoice | None:
    """``trainer.precision`` as the Trainer will get it: None when it is not ``auto`` (kept as
    configured), else :func:`choose_precision` for this machine's hardware."""
    if str(precision) != AUTO_PRECISION:
        return None
    device_type = accelerator_device_type(accelerator)
    cuda_bf16 = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_precision(device_type, family, cpu_bf16_support(), cuda_bf16=cuda_bf16)


def reduced_precision_warning(device: torch.device, precision: str, cpu_bf16: CpuBf16 | None = None) -> str | None:
    """Why this reduced precision on this CPU is a mistake, or None when it is not one.

    bf16 on a CPU without native bf16: measured on such a CPU, ``torch.autocast("cpu", bfloat16)``
    made an encoder-decoder training step ~12x slower and a bf16 matmul ran at ~1/60 of fp32 (oneDNN
    emulates it). With native bf16 there is no warning: it can be faster (docs/performance.md).
    fp16 on a CPU: not what PyTorch's CPU kernels are tuned for, and never measured a gain. Either
    still runs (and is tested), so this warns instead of refusing. ``cpu_bf16`` defaults to
    this machine's :func:`cpu_bf16_support`."""
    if device.type != "cpu" or not precision.startswith(("bf16", "16")):
        return None
    if precision.startswith("16"):
        return (
            f"trainer.precision={precision} on a CPU: fp16 is for GPUs, and slower than fp32 on CPUs. "
            "Use trainer.precision=auto (bf16-mixed where the CPU computes bf16 natively and it was measured "
            "faster, else 32) or trainer.precision=32."
        )
    bf16 = cpu_bf16_support() if cpu_bf16 is None else cpu_bf16
    if bf16.native:
        return None
    return (
        f"trainer.precision={precision} on a CPU with {bf16}: bf16 is emulated and far slower "
        "(measured on such a CPU: a training step ~12x slower, a bf16 matmul ~1/60 of fp32). "
        "Use trainer.precision=32 (or auto) on this CPU."
    )


def gpu_precision() -> str:
    """bf16-mixed where the GPU supports it (Ampere and newer), else 16-mixed (``trainer=gpu``)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"
