"""trainer.precision=auto and native-bf16 detection: pure functions fed synthetic CPU flags, so
every branch runs on any machine; plus the UNet's bf16-on-CPU paths (fp32 stays bit-identical)."""

from __future__ import annotations

import logging

import pytest
import torch

from genbench.devices import (
    CPU_BF16_MIN_SPEEDUP,
    CpuBf16,
    _cpuinfo_flags,
    bf16_from_flags,
    choose_precision,
    cpu_bf16_speedups,
    reduced_precision_warning,
    resolve_precision,
)


def cpu_flags(line: str) -> list[str]:
    """A /proc/cpuinfo flags line as the detection reads it."""
    return line.split()


SAPPHIRE_RAPIDS = cpu_flags("fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
ZEN4 = cpu_flags("fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16")
SKYLAKE = cpu_flags("fpu sse sse2 avx avx2 avx512f avx512bw avx512cd avx512dq avx512vl")
GRAVITON3 = cpu_flags("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve svebf16 bf16 i8mm")
GRAVITON2 = cpu_flags("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp")
NATIVE, EMULATED = CpuBf16(True, "test flags"), CpuBf16(False, "test flags")


@pytest.mark.parametrize(
    "flags,machine,native",
    [
        (SAPPHIRE_RAPIDS, "x86_64", True),
        (ZEN4, "x86_64", True),  # AMD EPYC Genoa: AVX512-BF16 without AMX
        (["amx_bf16"], "x86_64", True),
        (SKYLAKE, "x86_64", False),  # AVX-512 alone: oneDNN emulates bf16
        (GRAVITON3, "aarch64", True),
        (GRAVITON2, "aarch64", False),
        (["bf16"], "arm64", True),
        (["bf16"], "x86_64", False),  # an Arm feature name means nothing on x86
        (["avx512_bf16"], "aarch64", False),
        (SAPPHIRE_RAPIDS, "riscv64", False),
    ],
)
def test_native_bf16_from_cpu_flags(flags: list[str], machine: str, native: bool) -> None:
    found = bf16_from_flags(flags, machine)
    assert found.native is native
    assert ("native bf16" if native else "no native bf16") in str(found)


def test_the_evidence_names_the_flags_found() -> None:
    assert bf16_from_flags(SAPPHIRE_RAPIDS, "x86_64").evidence == "amx_bf16 avx512_bf16 in /proc/cpuinfo"
    assert "avx512_bf16" in bf16_from_flags(SKYLAKE, "x86_64").evidence  # what was looked for


def test_cpuinfo_flags_reads_x86_and_arm_layouts() -> None:
    x86 = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n"
    assert _cpuinfo_flags(x86) == ["fpu", "avx512_bf16", "amx_bf16"]
    assert _cpuinfo_flags(arm) == ["fp", "asimd", "bf16"]
    assert _cpuinfo_flags("processor\t: 0\n") is None


def test_auto_on_a_gpu_is_bf16_where_supported_else_fp16() -> None:
    assert choose_precision("cuda", "vae", EMULATED, cuda_bf16=True).precision == "bf16-mixed"
    assert choose_precision("cuda", "vae", NATIVE, cuda_bf16=False).precision == "16-mixed"


def test_auto_on_a_cpu_without_native_bf16_is_fp32_for_every_family() -> None:
    for family in [*cpu_bf16_speedups(), "toy"]:
        choice = choose_precision("cpu", family, EMULATED, speedups={family: 3.0})
        assert choice.precision == "32-true" and "emulated" in choice.reason


def test_auto_on_a_native_bf16_cpu_follows_the_measured_speed_up() -> None:
    speedups = {"fast": 1.5, "even": 1.02, "slow": 0.9}
    fast = choose_precision("cpu", "fast", NATIVE, speedups=speedups)
    assert fast.precision == "bf16-mixed" and "1.50x" in fast.reason
    for family in ("even", "slow"):
        choice = choose_precision("cpu", family, NATIVE, speedups=speedups)
        assert choice.precision == "32-true" and f"{speedups[family]:.2f}x" in choice.reason
    unmeasured = choose_precision("cpu", "toy", NATIVE, speedups=speedups)  # e.g. a plugin family
    assert unmeasured.precision == "32-true" and "never measured" in unmeasured.reason
    assert choose_precision("cpu", "even", NATIVE, speedups=speedups, min_speedup=1.0).precision == "bf16-mixed"


def test_the_measured_table_covers_the_builtin_families() -> None:
    from genbench.registry import family_names

    assert set(family_names()) <= set(cpu_bf16_speedups())  # every built-in family declares its measurement
    assert all(v > 0 for v in cpu_bf16_speedups().values()) and CPU_BF16_MIN_SPEEDUP >= 1.0


def test_an_explicit_precision_is_left_alone() -> None:
    assert resolve_precision("32-true", "cpu", "vae") is None
    assert resolve_precision("bf16-mixed", "cpu", "vae") is None
    assert resolve_precision("auto", "cpu", "vae").precision in ("32-true", "bf16-mixed")


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_on_a_cpu_is_warned_only_without_native_bf16(precision: str) -> None:
    cpu = torch.device("cpu")
    message = reduced_precision_warning(cpu, precision, cpu_bf16=EMULATED)
    assert message is not None and precision in message and "trainer.precision=32" in message
    assert "12x slower" in message
    assert reduced_precision_warning(cpu, precision, cpu_bf16=NATIVE) is None


def test_fp16_on_a_cpu_is_always_warned_and_gpus_never() -> None:
    assert "fp16" in reduced_precision_warning(torch.device("cpu"), "16-mixed", cpu_bf16=NATIVE)
    for precision in ("16-mixed", "bf16-mixed", "32-true"):
        assert reduced_precision_warning(torch.device("cuda"), precision, cpu_bf16=EMULATED) is None
    assert reduced_precision_warning(torch.device("cpu"), "32-true", cpu_bf16=EMULATED) is None


def test_train_records_what_auto_chose_and_logs_why(train_cfg, caplog: pytest.LogCaptureFixture) -> None:
    from genbench.train import apply_auto_precision

    cfg = train_cfg("model=vae", "trainer.precision=auto")
    with caplog.at_level(logging.INFO, logger="genbench.train"):
        chosen = apply_auto_precision(cfg, "vae")
    assert chosen in ("32-true", "bf16-mixed") and cfg.trainer.precision == chosen
    assert f"trainer.precision=auto chose {chosen}" in caplog.text
    assert apply_auto_precision(cfg, "vae") is None  # explicit now: left as it is


def test_auto_trains(train_cfg) -> None:
    from genbench.train import train

    metrics = train(train_cfg("model=vae", "trainer.precision=auto", "trainer.max_steps=2"))
    assert metrics["global_step"] == 2


# --- the UNet's bf16-on-CPU paths ---------------------------------------------------------------------
def test_unet_fp32_is_untouched_by_the_bf16_paths() -> None:
    """GroupNorm32 and attention() take the plain path for fp32: the same numbers as nn.GroupNorm
    and scaled_dot_product_attention, bit for bit."""
    from genbench.nets.unet import GroupNorm32, attention

    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    norm, plain = GroupNorm32(4, 16), torch.nn.GroupNorm(4, 16)
    plain.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), plain(x))
    q, k, v = torch.randn(3, 2, 1, 64, 16).unbind(0)
    assert torch.equal(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_unet_bf16_on_cpu_normalises_and_attends_in_fp32() -> None:
    from genbench.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(channels=1, image_size=16, base_channels=8, channel_mults=(1, 2), attn_resolutions=(8,))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), net(x, t), atol=0.1)  # bf16 rounding, not a different function
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
