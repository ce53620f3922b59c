"""The size of the cached test/bench venv (./build.sh venv-size), the figure the README quotes.

    python bench/venv_size.py VENV [--json bench/results/venv.json]

Counts what `du` counts: the blocks each file and folder under VENV holds
on disk, each inode once, links not followed; and the part of it that
torch and the NVIDIA CUDA libraries it depends on take. Standard library
only; nothing is imported from the venv (its package versions are read from
its dist-info metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "requirements.lock"


def disk_bytes(root: Path, seen: Set[Tuple[int, int]]) -> int:
    """Bytes of disk that root and everything under it hold, as du counts
    them (st_blocks of 512 bytes); an inode already in seen counts 0."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no lib/python3*/site-packages: not a venv")
    return found[0]


def dist_version(site: Path, name: str) -> Optional[str]:
    """The version of distribution name installed in site, from its dist-info folder's name."""
    want = re.sub(r"[-_.]+", "_", name).lower()
    for d in site.glob("*.dist-info"):
        dist, _, version = d.name[: -len(".dist-info")].partition("-")
        if re.sub(r"[-_.]+", "_", dist).lower() == want:
            return version
    return None


def measure(venv: Path) -> Dict[str, Any]:
    site = site_packages(venv)
    # The parts first, so that the total counts each of their inodes once too.
    seen: Set[Tuple[int, int]] = set()
    torch_bytes = disk_bytes(site / "torch", seen) if (site / "torch").is_dir() else 0
    nvidia_bytes = disk_bytes(site / "nvidia", seen) if (site / "nvidia").is_dir() else 0
    total = torch_bytes + nvidia_bytes + disk_bytes(venv, seen)
    return {
        "venv_disk_bytes": total,
        "torch_disk_bytes": torch_bytes,
        "nvidia_disk_bytes": nvidia_bytes,
        "distributions": sum(1 for _ in site.glob("*.dist-info")),
        "torch_version": dist_version(site, "torch"),
        "lock_sha256_16": hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16],
    }


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("venv", type=Path, help="the venv (./build.sh venv prints it)")
    ap.add_argument("--json", metavar="FILE", help="record the result (bench/results/venv.json)")
    args = ap.parse_args(argv)
    out = {**common.run_info(), "platform": common.machine()["platform"], **measure(args.venv)}
    gib = 1 << 30
    print(f"{args.venv}: {out['venv_disk_bytes'] / gib:.2f} GiB on disk ({out['distributions']} distributions); "
          f"torch {out['torch_version']} {out['torch_disk_bytes'] / gib:.2f} GiB, NVIDIA CUDA libraries "
          f"{out['nvidia_disk_bytes'] / gib:.2f} GiB")
    if args.json:
        common.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
