"""benchmarks/machine.py: what machine a benchmark's figures came from."""

from __future__ import annotations

from .conftest import load_benchmark

machine = load_benchmark("machine")

# two processors of a bare-named virtual machine; "model name" must not be read as "model"
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
"""


def test_generation_is_read_from_the_first_processor_and_not_from_model_name():
    assert machine.cpu_generation(AMD) == "AuthenticAMD family 25 model 17"


def test_model_name_and_features_come_from_the_same_block():
    assert machine.cpu_model(AMD) == "AMD EPYC"
    assert machine.cpu_features(AMD) == "AVX-512; AVX-512 BF16, no AMX"
    assert machine.cpu_features("processor : 0\n") == "unknown"


def test_generation_names_what_is_missing():
    assert machine.cpu_generation("vendor_id : GenuineIntel\nmodel : 143\n") == "GenuineIntel family ? model 143"
    assert machine.cpu_generation("processor : 0\n") == "unknown"


def test_machine_info_opens_every_result_with_the_generation(monkeypatch):
    import platform

    monkeypatch.setattr(machine, "read_cpuinfo", lambda: AMD)
    assert machine.machine_info() == {
        "cpu": "AMD EPYC",
        "cpu_generation": "AuthenticAMD family 25 model 17",
        "cpu_features": "AVX-512; AVX-512 BF16, no AMX",
        "machine": platform.machine(),
    }
