"""./build.sh demo (bench/demo.py) speaks one unit system, the one tpde's
commands print (MiB), and names no path that is gone when it ends without
saying so. Run on a two-checkpoint run of the real MiniLM weights, trained
into a temporary cache (the demo's own run stays as it is)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_DECIMAL_UNIT = re.compile(r"\b[KMGT]B\b")  # kB/MB/GB/TB: 10^3n bytes, beside tpde's KiB/MiB/GiB


def test_demo_output_has_one_unit_and_no_dangling_path(run_py, minilm_model_dir, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "bench")!r})
        import hf_run
        hf_run.OUT = Path({str(tmp_path / "cache")!r})   # train the small run here, not in bench/out
        import demo
        sys.exit(demo.main(["--checkpoints", "2", "--steps-between", "1", "--tmpdir", {str(tmp_path)!r}]))
    """)
    proc = run_py("-c", code, cwd=tmp_path, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0 and "VERDICT: all 2 checkpoints" in out, out[-3000:] + proc.stderr[-3000:]

    decimal = _DECIMAL_UNIT.findall(out)
    assert not decimal and "MiB" in out, f"decimal units {sorted(set(decimal))} beside MiB:\n{out}"

    # Every path the demo names under its temporary folder is gone now: the
    # line that names the store must say so.
    (line,) = [ln for ln in out.splitlines() if ln.startswith("store:")]
    store = Path(line.split()[1])
    assert not store.exists()
    assert "temporary" in line and "removed" in line, line
