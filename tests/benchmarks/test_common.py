"""Benchmark results name the CPU generation, which the model name alone does not, and are written one
way."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from common import cpu_generation, device_name, write_result

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx avx2 fma

processor\t: 1
cpu family\t: 99
model\t\t: 99
flags\t\t: avx512f amx_tile
"""


def test_the_first_processor_gives_family_model_and_wide_vector_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3)
    assert cpu_generation(cpuinfo) == {"cpu_family": "25", "cpu_model": "1", "avx512": False, "amx": False}


def test_amx_and_avx512_are_read_from_the_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("cpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx2 avx512f amx_tile amx_bf16\n")
    assert cpu_generation(cpuinfo) == {"cpu_family": "6", "cpu_model": "143", "avx512": True, "amx": True}


def test_no_cpuinfo_gives_nothing_rather_than_failing(tmp_path):
    assert cpu_generation(tmp_path / "absent") == {}


def test_a_result_is_written_as_indented_json_in_a_folder_made_for_it(tmp_path, capsys):
    out = tmp_path / "results" / "new" / "bench-x.json"
    assert write_result(out, {"model": Path("/m"), "rate": 1.5}, indent=1) == out
    text = out.read_text()
    assert text.endswith("}\n") and text.startswith('{\n "model"')
    assert json.loads(text) == {"model": "/m", "rate": 1.5}
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_cpu_is_named_with_its_generation_where_one_name_covers_several(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3)
    assert device_name(cpuinfo) == "AMD EPYC (family 25 model 1)"
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) Processor\n")
    assert device_name(cpuinfo) == "Intel(R) Xeon(R) Processor"  # no numbers to tell it by
    assert device_name(tmp_path / "absent") is None
