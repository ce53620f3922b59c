"""A store on object storage against boto3 on the raw files, one real S3 server, one run.

The server is VersityGW on loopback (tests/s3server.py, the tests' server),
with its data on this machine's disk. The data is bench/store.py's full
fp32 series: the MiniLM Trainer run, 8 checkpoint folders of 273 MB, cached
in bench/out/.

  upload  `Store.add` of the newest folder into s3://bucket/run holding
          the 7 before it (a steady-state add: committed when add returns;
          the previous newest's re-code then runs in the background and is
          timed apart), against boto3's `upload_file` (default TransferConfig)
          of every file of the same folder, one after another. Bytes sent:
          what the bucket grew by.
  resume  `Store.load` of the newest checkpoint's tensor files through a
          new, empty cache, against boto3's `download_file` of the same files
          into a new folder and loading them (safetensors, then
          torch.load(weights_only=True), tensors materialised), as
          bench/store.py's resume does. Requests of the load, by method.
  capped  the same two through tests/s3proxy.py with a bandwidth cap
          (--cap-mbit, default 1000: 1 Gbit/s), for a network slower than
          this VM's loopback.

Every side is timed --reps times (median), interleaved; ratios between the
two are printed beside the seconds. Every stored checkpoint is restored and
compared (sha256) before anything is timed.

    PYTHONPATH=python:tests HF_HUB_OFFLINE=1 $(./build.sh venv)/bin/python bench/s3.py \\
        [--reps 3] [--json bench/results/s3.json]

It reports; it asserts nothing but correctness.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import common  # noqa: E402
import hf_run  # noqa: E402
import store as store_bench  # noqa: E402
from common import MB, BenchError  # noqa: E402
from s3proxy import FaultProxy  # noqa: E402
from s3server import S3Server  # noqa: E402

TARGETS = {"upload": 1.2, "resume": 1.5}


_buckets = iter(range(1, 1 << 30))


def new_bucket(srv: S3Server, kind: str) -> str:
    """A fresh bucket for one timing (names are never reused in a run)."""
    return srv.make_bucket(f"tpde-bench-{kind}-{next(_buckets)}-{os.getpid()}")


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], Any]) -> Tuple[Any, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def sha_tree(d: Path) -> Dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def bucket_bytes(srv: S3Server, bucket: str, prefix: str) -> Tuple[int, int]:
    """(bytes, objects) below prefix, by the server's listing."""
    c = srv.client()
    n = size = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n += 1
            size += o["Size"]
    return size, n


class Env:
    """The AWS_* variables and the cache folder of one side of a timing."""

    def __init__(self, srv: S3Server, endpoint: str, cache: Path) -> None:
        self.vars = {**srv.env(endpoint), "TPDE_S3_CACHE": str(cache)}
        self.vars.pop("AWS_CA_BUNDLE", None)

    def __enter__(self) -> "Env":
        self.old = {k: os.environ.get(k) for k in [*self.vars, "AWS_CA_BUNDLE"]}
        os.environ.pop("AWS_CA_BUNDLE", None)
        os.environ.update(self.vars)
        return self

    def __exit__(self, *exc: Any) -> None:
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload_rows(srv: S3Server, endpoint: str, run: hf_run.Run, work: Path, reps: int) -> Dict[str, Any]:
    import tpde

    newest, step = run.dirs[-1], run.steps[-1]
    files = [f for _, f in hf_run.tree_files(newest)]
    rows: Dict[str, List[float]] = {"store_add": [], "store_recode": [], "boto3": []}
    sent: Dict[str, int] = {}
    c = srv.client(endpoint)
    for rep in range(reps):
        bucket = new_bucket(srv, "up")
        url = f"s3://{bucket}/run"
        cache = work / f"cache-{bucket}"
        with Env(srv, endpoint, cache):
            with tpde.Store(url) as st:
                for d, s in zip(run.dirs[:-1], run.steps[:-1]):
                    st.add(d, step=s)
            before, _ = bucket_bytes(srv, bucket, "run/")
            os.sync()
            with tpde.Store(url) as st:
                _, t = timed(lambda: st.add(newest, step=step))
                after, _ = bucket_bytes(srv, bucket, "run/")
                _, r = timed(st.wait)
        rows["store_add"].append(t)
        rows["store_recode"].append(r)
        sent["store"] = after - before
        shutil.rmtree(cache, ignore_errors=True)

        raw_bucket = new_bucket(srv, "raw")
        os.sync()

        def boto() -> None:
            for f in files:
                c.upload_file(str(f), raw_bucket, f"run/checkpoint-{step}/{f.relative_to(newest)}")

        _, t = timed(boto)
        rows["boto3"].append(t)
        sent["boto3"], _ = bucket_bytes(srv, raw_bucket, "run/")
        print(f"  upload rep {rep + 1}: store add {rows['store_add'][-1]:.2f} s (+ re-code "
              f"{rows['store_recode'][-1]:.2f} s), boto3 {t:.2f} s", flush=True)
    m = {k: med(v) for k, v in rows.items()}
    return {"seconds": rows, "median_s": m, "bytes_sent": sent, "ratio": m["store_add"] / m["boto3"],
            "raw_bytes": sum(f.stat().st_size for f in files), "files": len(files)}


def resume_rows(srv: S3Server, endpoint: str, run: hf_run.Run, work: Path, reps: int) -> Dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    import tpde

    newest, step = run.dirs[-1], run.steps[-1]
    names = [n for n in store_bench.TENSOR_FILES if (newest / n).is_file()]
    bucket = new_bucket(srv, "res")
    url = f"s3://{bucket}/run"
    c = srv.client(endpoint)
    with Env(srv, endpoint, work / f"cache-{bucket}-writer"):
        # No grace period while the series is built: what the bucket then
        # holds is the store at rest (FORMAT §11.12: replaced keyframes go).
        os.environ["TPDE_S3_GRACE"] = "0"
        try:
            with tpde.Store(url) as st:
                for d, s in zip(run.dirs, run.steps):
                    st.add(d, step=s)
                chk = work / "restored"
                for d, s in zip(run.dirs, run.steps):
                    st.restore(s, chk)
                    if sha_tree(chk) != sha_tree(d):
                        raise BenchError(f"checkpoint {s} restored from {url} differs from its folder")
                    shutil.rmtree(chk)
        finally:
            os.environ.pop("TPDE_S3_GRACE", None)
    series_bytes, series_objects = bucket_bytes(srv, bucket, "run/")
    series_raw = sum(hf_run.dir_bytes(d) for d in run.dirs)
    for n in names:
        c.upload_file(str(newest / n), bucket, f"raw/{n}")

    rows: Dict[str, List[float]] = {"store": [], "boto3": []}
    for rep in range(reps):
        cache = work / f"cache-{bucket}-{rep}"
        with Env(srv, endpoint, cache), store_bench.trainer_safe_globals():
            def load() -> Dict[str, Any]:
                with tpde.Store(url) as st:
                    return {n: st.load(step, file=n, unpickle=True) for n in names}
            out, t = timed(load)
            del out
        rows["store"].append(t)
        shutil.rmtree(cache, ignore_errors=True)

        dest = work / f"raw-{bucket}-{rep}"
        dest.mkdir()

        def boto() -> Dict[str, Any]:
            got = {}
            with store_bench.trainer_safe_globals():
                for n in names:
                    c.download_file(bucket, f"raw/{n}", str(dest / n))
                    got[n] = (load_file(str(dest / n)) if n.endswith(".safetensors")
                              else torch.load(dest / n, weights_only=True))
                got["model.safetensors"] = {k: v.clone() for k, v in got["model.safetensors"].items()}
            return got

        out, t = timed(boto)
        del out
        rows["boto3"].append(t)
        shutil.rmtree(dest)
        print(f"  resume rep {rep + 1}: store {rows['store'][-1]:.3f} s, boto3 {t:.3f} s", flush=True)
    m = {k: med(v) for k, v in rows.items()}
    return {"seconds": rows, "median_s": m, "ratio": m["store"] / m["boto3"], "files": names, "url": url,
            "raw_bytes": sum((newest / n).stat().st_size for n in names),
            "series": {"checkpoints": len(run.dirs), "raw_bytes": series_raw, "bucket_bytes": series_bytes,
                       "bucket_objects": series_objects, "ratio": series_raw / series_bytes}}


def load_requests(srv: S3Server, proxy: FaultProxy, url: str, step: int, names: List[str], work: Path) -> Dict[str, Any]:
    """The requests one load of the newest checkpoint makes through an empty
    cache (untimed), by method, against the objects it needs."""
    import tpde

    cache = work / "cache-count"
    with Env(srv, proxy.endpoint, cache), store_bench.trainer_safe_globals():
        proxy.counts.clear()
        with tpde.Store(url) as st:
            for n in names:
                st.load(step, file=n, unpickle=True)
        got = {m: proxy.count(m) for m in ("GET", "HEAD", "PUT", "DELETE")}
        got["LIST"] = sum(v for (m, p), v in proxy.counts.items() if m == "GET" and "list-type" in p)
        got["GET"] -= got["LIST"]
    # Each object the load needed is in the cache once; the rest of the
    # GETs are the marker, the hint, the manifest and its copy.
    fetched = sum(1 for p in (cache / "objects").rglob("*") if p.is_file()) if (cache / "objects").is_dir() else 0
    caches = [d for d in cache.iterdir() if d.is_dir()]
    if caches:
        fetched = sum(1 for p in (caches[0] / "objects").rglob("*") if p.is_file())
    return {"by_method": got, "objects_fetched": fetched, "other_gets": got["GET"] - fetched}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cap-mbit", type=float, default=1000.0, help="the capped rows' bandwidth (Mbit/s)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    p = hf_run.make_params(store_bench.FULL["checkpoints"], store_bench.FULL["steps_between"], "fp32")
    run = hf_run.load_run(p, log=lambda s: print(s, file=sys.stderr, flush=True))
    rec: Dict[str, Any] = {"benchmark": "s3", **common.run_info(), "command": common.command_line(),
                           "machine": common.machine(), "run": p.describe(), "reps": args.reps,
                           "server": "VersityGW (tests/s3server.py) on 127.0.0.1", "targets": TARGETS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tpde-s3-bench-") as tmp:
        work = Path(tmp)
        srv = S3Server(work / "s3data").start()
        try:
            print("loopback, no cap:", flush=True)
            rec["upload"] = upload_rows(srv, srv.endpoint, run, work, args.reps)
            rec["resume"] = resume_rows(srv, srv.endpoint, run, work, args.reps)
            with FaultProxy(srv.endpoint) as proxy:
                names = rec["resume"]["files"]
                rec["resume"]["requests"] = load_requests(srv, proxy, rec["resume"]["url"], run.steps[-1], names, work)
                proxy.set_bandwidth(args.cap_mbit * 1e6 / 8)
                print(f"through tests/s3proxy.py, capped at {args.cap_mbit:g} Mbit/s:", flush=True)
                rec["capped"] = {"mbit_s": args.cap_mbit,
                                 "upload": upload_rows(srv, proxy.endpoint, run, work, args.reps),
                                 "resume": resume_rows(srv, proxy.endpoint, run, work, args.reps)}
        finally:
            srv.stop()
    up, res = rec["upload"], rec["resume"]
    cup, cres = rec["capped"]["upload"], rec["capped"]["resume"]
    print()
    print(common.render_table(
        ["", "tpde s", "boto3 s", "tpde / boto3", "target"],
        [["upload (loopback)", f"{up['median_s']['store_add']:.2f}", f"{up['median_s']['boto3']:.2f}",
          f"{up['ratio']:.2f}", f"<= {TARGETS['upload']}"],
         ["resume (loopback)", f"{res['median_s']['store']:.3f}", f"{res['median_s']['boto3']:.3f}",
          f"{res['ratio']:.2f}", f"<= {TARGETS['resume']}"],
         [f"upload ({args.cap_mbit:g} Mbit/s)", f"{cup['median_s']['store_add']:.2f}",
          f"{cup['median_s']['boto3']:.2f}", f"{cup['ratio']:.2f}", ""],
         [f"resume ({args.cap_mbit:g} Mbit/s)", f"{cres['median_s']['store']:.3f}",
          f"{cres['median_s']['boto3']:.3f}", f"{cres['ratio']:.2f}", ""]]))
    print(f"bytes sent by the upload: tpde {up['bytes_sent']['store'] / MB:.1f} MB, boto3 "
          f"{up['bytes_sent']['boto3'] / MB:.1f} MB ({up['bytes_sent']['boto3'] / max(1, up['bytes_sent']['store']):.2f}x)")
    print(f"requests of one load of the newest checkpoint: {res['requests']}")
    ser = res["series"]
    print(f"the series in the bucket: {ser['checkpoints']} checkpoints, {ser['raw_bytes'] / MB:.1f} MB raw in "
          f"{ser['bucket_bytes'] / MB:.1f} MB ({ser['ratio']:.2f}x), {ser['bucket_objects']} objects")
    rec["targets_met"] = {"upload": up["ratio"] <= TARGETS["upload"], "resume": res["ratio"] <= TARGETS["resume"]}
    rec["seconds"] = time.perf_counter() - t0
    rec["load_average_end"] = list(os.getloadavg())
    if args.json:
        common.write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
