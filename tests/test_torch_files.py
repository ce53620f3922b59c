"""torch.save files as containers in tpde.compress_file / tpde compress.

A torch zip's storages are coded as typed tensors (their dtypes read from
data.pkl with pickletools, nothing unpickled), every other byte verbatim,
so a .pt compresses like the same tensors as .safetensors and restores
byte-identical. Files that are not plain torch zips are coded as bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tpde


def _round_trip(src: Path) -> float:
    packed = Path(str(src) + ".tpde")
    back = Path(str(src) + ".back")
    tpde.compress_file(src, packed)
    tpde.decompress_file(packed, back)
    assert back.read_bytes() == src.read_bytes()
    return src.stat().st_size / packed.stat().st_size


def test_a_real_pt_state_dict_compresses_within_one_percent_of_safetensors(tmp_path: Path,
                                                                          minilm_model_dir: Path) -> None:
    sd = load_file(minilm_model_dir / "model.safetensors")
    pt, st = tmp_path / "pytorch_model.bin", tmp_path / "model.safetensors"
    torch.save(sd, pt)
    save_file(sd, st)
    r_pt, r_st = _round_trip(pt), _round_trip(st)
    assert tpde.file_info(str(pt) + ".tpde")["source"] == "torch-zip"
    assert r_pt > 1.1  # generic byte coding of these weights gives about 1.02
    assert abs(r_pt / r_st - 1) <= 0.01, (r_pt, r_st)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_every_dtype_restores_byte_identical(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(300, 200, generator=g) * 3).to(dtype)
    src = tmp_path / "t.pt"
    torch.save({"t": t, "view": t[10:20], "scalar": torch.tensor(1.5), "empty": torch.empty(0)}, src)
    _round_trip(src)
    assert tpde.file_info(str(src) + ".tpde")["source"] == "torch-zip"


def test_a_lightning_style_checkpoint_and_an_optimizer_state(tmp_path: Path) -> None:
    m = torch.nn.Linear(256, 256)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 256)).sum().backward()
    opt.step()
    src = tmp_path / "epoch=0.ckpt"
    torch.save({"epoch": 0, "state_dict": m.state_dict(), "optimizer_states": [opt.state_dict()],
                "hyper_parameters": {"lr": 1e-3}}, src)
    assert _round_trip(src) > 1.0
    assert tpde.file_info(str(src) + ".tpde")["source"] == "torch-zip"


def test_torchscript_and_non_zip_files_are_coded_as_bytes(tmp_path: Path) -> None:
    script = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 64)), script)
    _round_trip(script)
    assert tpde.file_info(str(script) + ".tpde")["source"] == "bytes"
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"PK\x03\x04" + os.urandom(5000))
    _round_trip(fake)
    assert tpde.file_info(str(fake) + ".tpde")["source"] == "bytes"


def test_a_pickle_naming_os_system_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(2000), "x": Evil()}, src)
    _round_trip(src)
    assert not marker.exists()


def test_the_cli_compresses_torch_files(tmp_path: Path, run_py) -> None:
    src = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"exp_avg": torch.randn(100_000)}}, "param_groups": []}, src)
    r = run_py("-m", "tpde", "compress", str(src), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_py("-m", "tpde", "info", str(src) + ".tpde", "--json")
    assert r.returncode == 0, r.stderr
    assert '"source": "torch-zip"' in r.stdout
