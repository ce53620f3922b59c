"""The store commands of ``tpde``: add, restore, ls, info, rm, verify, stats.

    tpde add STORE PATH... [--step N] [--tag T] [--keyframe-interval K] [--follow-links]
                           [--reference previous|base] [--base PATH] [--lossy PATTERN=BOUND]
    tpde restore STORE STEP DEST [--force]
    tpde ls STORE [--json]
    tpde info STORE [STEP] [--json]
    tpde rm STORE STEP
    tpde verify STORE [--repair] [--shallow] [--json]
    tpde stats STORE [--json] [--plot FILE.png]

STEP is a number from 0 to 2**63 - 1, or "latest" (the newest). Names and
tags read from a store are untrusted: control characters in them are
printed escaped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from ._interrupt import Stop
from ._text import human as _human
from ._text import printable as _p
from .errors import CancelledError, InvalidArgumentError
from .store import CheckpointInfo, Store, check_step

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

COMMANDS = ("add", "restore", "ls", "rm", "verify", "stats")


def is_store(path: str) -> bool:
    """Whether path is (or may be: it cannot be read) a store."""
    try:
        os.stat(os.path.join(path, "tpde-store.json"))
    except PermissionError:
        return os.path.isdir(path) or True  # the store will say EACCES, naming it
    except OSError:
        return False
    return True


def _step(text: str, latest: bool) -> Optional[int]:
    try:
        return check_step(text, latest=latest)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: Any, usage_error: type) -> None:
    def step_arg(text: str) -> int:
        return _step(text, latest=False)  # type: ignore[return-value]

    def step_or_latest(text: str) -> Optional[int]:
        return _step(text, latest=True)

    def interval_arg(text: str) -> int:
        try:
            k = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid keyframe interval {text!r}") from None
        if not 1 <= k <= 1000:
            raise argparse.ArgumentTypeError(f"keyframe interval must be 1 to 1000, not {k}")
        return k

    a = sub.add_parser("add", help="add checkpoints (files or folders) to a store",
                       description="add each PATH (a file or a folder, e.g. a Trainer's checkpoint-N/) to STORE "
                                   "as one checkpoint; the step is --step, else N of a folder named checkpoint-N, "
                                   "step-N or N (checkpoint-500 -> 500), else the newest step + 1")
    a.add_argument("store", metavar="STORE")
    a.add_argument("paths", metavar="PATH", nargs="+")
    a.add_argument("--step", type=step_arg, default=None, metavar="N")
    a.add_argument("--tag", action="append", default=None, metavar="T", help="a tag (repeat for more)")
    a.add_argument("--keyframe-interval", type=interval_arg, default=None, metavar="K",
                   help="for a new store: decode at most K frames per tensor (default 10)")
    a.add_argument("--reference", choices=("previous", "base"), default=None,
                   help="for a new store: code each checkpoint against the previous one (default) or a base")
    a.add_argument("--base", default=None, metavar="PATH", help="the base (with --reference base)")
    a.add_argument("--lossy", action="append", default=None, metavar="PATTERN=BOUND",
                   help="for a new store: tensors matching PATTERN (file:name or name) may be stored within "
                        "BOUND (absolute); lossless otherwise")
    a.add_argument("--run", default=None, metavar="NAME", help="add to the named run (default main)")
    a.add_argument("--parent", default=None, metavar="RUN:STEP|base",
                   help="a new run's parent: a checkpoint of another run, or the store's base; its first "
                        "checkpoint is coded against it")
    a.add_argument("--follow-links", action="store_true",
                   help="store what a symlink pointing outside an added folder points to (refused otherwise)")
    a.add_argument("-q", "--quiet", action="store_true")
    a.add_argument("--json", action="store_true")

    r = sub.add_parser("restore", help="write a checkpoint's original files", description="write checkpoint STEP "
                       "of STORE into the folder DEST, every file byte-identical to what was added")
    r.add_argument("store", metavar="STORE")
    r.add_argument("step", metavar="STEP", type=step_or_latest)
    r.add_argument("dest", metavar="DEST")
    r.add_argument("-f", "--force", action="store_true",
                   help="restore into a folder that is not empty, replacing the files of the same names")
    r.add_argument("--run", default=None, metavar="NAME", help="the run (default main)")
    r.add_argument("-q", "--quiet", action="store_true")

    ls = sub.add_parser("ls", help="list a store's checkpoints", description="list the checkpoints of STORE")
    ls.add_argument("store", metavar="STORE")
    ls.add_argument("--run", default=None, metavar="NAME", help="the run to list (default main)")
    ls.add_argument("--runs", action="store_true", help="list the store's runs instead")
    ls.add_argument("--json", action="store_true")

    rm = sub.add_parser("rm", help="remove a checkpoint", description="remove checkpoint STEP; checkpoints coded "
                        "against it are re-coded first")
    rm.add_argument("store", metavar="STORE")
    # default False, not None: None is what "latest" parses to.
    rm.add_argument("step", metavar="STEP", type=step_or_latest, nargs="?", default=False)
    rm.add_argument("--run", default=None, metavar="NAME",
                    help="the run (default main); with no STEP, remove the whole run")

    v = sub.add_parser("verify", help="check a store", description="check every object and chain of STORE (exit 1 "
                       "and name what is affected if anything is damaged)")
    v.add_argument("store", metavar="STORE")
    v.add_argument("--repair", action="store_true", help="first remove what dead writers left behind")
    v.add_argument("--shallow", action="store_true", help="check hashes only; do not decode")
    v.add_argument("--json", action="store_true")

    st = sub.add_parser("stats", help="sizes, ratios and changes per checkpoint",
                        description="size per checkpoint, ratio per tensor group, change per layer")
    st.add_argument("store", metavar="STORE")
    st.add_argument("--json", action="store_true")
    st.add_argument("--plot", metavar="FILE.png", default=None, help="draw the figures with matplotlib")


def _info_json(i: CheckpointInfo) -> Dict[str, Any]:
    d = asdict(i)
    d["ratio"] = i.ratio if not i.damaged else None
    d["lossless"] = i.lossless
    return d


def _need_store(path: str, usage_error: type) -> None:
    if _SCHEME.match(path):
        raise usage_error(f"{path}: tpde cannot serve {path.split('://')[0]}:// stores; a store is a local folder")
    if not is_store(path):
        raise usage_error(f"{path}: not a tpde store")


def _parse_step(text: str, usage_error: type, *, latest: bool = True, what: str = "step") -> Optional[int]:
    try:
        return check_step(text, what, latest=latest)
    except InvalidArgumentError as e:
        raise usage_error(str(e)) from None


def run(args: argparse.Namespace, usage_error: type, bar_factory: Any) -> int:
    cmd = args.command
    if cmd == "add":
        return _add(args, usage_error, bar_factory)
    _need_store(args.store, usage_error)
    run_name = getattr(args, "run", None)
    with Store(args.store) as store:
        if cmd == "restore":
            info = store.info(args.step, run=run_name)  # the step restored, named once: "latest" may move
            t0 = time.perf_counter()
            out = store.restore(info.step, args.dest, force=args.force, run=run_name)
            if not args.quiet:
                print(f"restored checkpoint {info.step}: {len(info.files)} files, {_human(info.raw_bytes)} "
                      f"into {out} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
            return 0
        if cmd == "ls" and args.runs:
            runs = store.runs()
            if args.json:
                print(json.dumps(runs, indent=1))
                return 0
            print(f"{'run':<24}  {'checkpoints':>11}  {'newest':>10}  parent")
            for r in runs:
                p = r["parent"]
                parent = "-" if p is None else ("base" if p.get("base") else f"{p['run']}:{p['step']}")
                newest = "-" if r["newest"] is None else str(r["newest"])
                print(f"{_p(r['name']):<24}  {r['count']:>11}  {newest:>10}  {_p(parent)}")
            return 0
        if cmd == "ls":
            infos = store.list(run=run_name)  # one snapshot, each record read once
            if args.json:
                print(json.dumps([_info_json(i) for i in infos], indent=1))
                return 1 if any(i.damaged for i in infos) else 0
            print(f"{'step':>10}  {'files':>5}  {'raw':>10}  {'stored':>10}  {'ratio':>7}  {'frames':>6}  tags")
            for i in infos:
                if i.damaged and not i.files:
                    print(f"{i.step:>10}  damaged: {_p(i.problem)}")
                    continue
                print(f"{i.step:>10}  {len(i.files):>5}  {_human(i.raw_bytes):>10}  {_human(i.stored_bytes):>10}  "
                      f"{i.ratio:>6.2f}x  {i.max_chain:>6}  {_p(','.join(i.tags))}"
                      + ("" if i.lossless else f"  lossy (max error {i.max_error:.3g})")
                      + (f"  damaged: {_p(i.problem)}" if i.damaged else ""))
            damaged = [i.step for i in infos if i.damaged]
            if damaged:
                print(f"damaged: checkpoints {', '.join(map(str, damaged))} (tpde verify names what)", file=sys.stderr)
                return 1
            return 0
        if cmd == "info":
            step = None if args.step is None else _parse_step(args.step, usage_error)
            if args.step is None and run_name is not None:
                info = store.info(None, run=run_name)
                print(f"run {_p(run_name)}: newest checkpoint {info.step}; tpde ls --run {_p(run_name)} lists it")
                return 0
            if args.step is None and not args.json:
                cfg = store.config
                st = store.stats()
                lossy = "lossless" if not cfg.get("lossy") else "lossy rules " + json.dumps(cfg["lossy"])
                print(f"store {_p(args.store)}: {len(st['checkpoints'])} checkpoints, {_human(st['raw_bytes'])} raw "
                      f"in {_human(st['disk_bytes'])} on disk ({(st['ratio'] or 0):.2f}x); keyframe interval "
                      f"{cfg.get('keyframe_interval')}, reference {cfg.get('reference')}, {lossy}")
                if st["damaged"]:
                    print(f"damaged: checkpoints {', '.join(st['damaged'])} (tpde verify names what)")
                    return 1
                return 0
            if args.step is None:
                print(json.dumps({"config": store.config, "stats": store.stats()}, indent=1))
                return 0
            info = store.info(step, run=run_name)
            if args.json:
                print(json.dumps(_info_json(info), indent=1))
                return 0
            print(f"checkpoint {info.step} ({_p(info.created)}) tags: {_p(','.join(info.tags)) or '-'}; "
                  f"{_human(info.raw_bytes)} in {_human(info.stored_bytes)} ({info.ratio:.2f}x), "
                  f"at most {info.max_chain} frame(s) per tensor, "
                  + ("bit-exact" if info.lossless else f"lossy, max error {info.max_error:.3g}"))
            for f in info.files:
                print(f"  {_p(f.path):<40} {_human(f.size):>10}  {f.layout:<12} {f.tensors:>4} tensors"
                      + (f"  ({_p(f.note)})" if f.note else ""))
            if info.damaged:
                print(f"damaged: {_p(info.problem)}")
                return 1
            return 0
        if cmd == "rm":
            if args.step is False and run_name is None:
                raise usage_error("rm needs STEP (or --run NAME to remove a whole run)")
            if args.step is False:
                store.remove_run(run_name)
            else:
                store.remove(args.step, run=run_name)
            return 0
        if cmd == "verify":
            rep = store.verify(deep=not args.shallow, repair=args.repair)
            if args.json:
                print(json.dumps({"ok": rep.ok, "affected_steps": rep.affected_steps, "cleaned": rep.cleaned,
                                  "problems": [asdict(p) for p in rep.problems]}, indent=1))
            else:
                if rep.cleaned:
                    c = rep.cleaned
                    print(f"removed {c['temporary']} unfinished file(s), {c['objects']} unreferenced object(s), "
                          f"{c['manifests']} old manifest(s); rewrote {c.get('copies', 0)} damaged or missing "
                          "copies" + (" (readers busy: objects kept)" if c.get("readers_busy") else ""),
                          file=sys.stderr)
                    if c.get("reclaimed"):
                        print("removed checkpoint(s) no folder holds any more: "
                              + ", ".join(map(str, c["reclaimed"])), file=sys.stderr)
                    if c.get("kept"):
                        print(f"kept unreferenced objects: {_p(c['kept'])}", file=sys.stderr)
                    for f in c.get("foreign") or []:
                        print(f"left alone (not written by tpde): {_p(f)}", file=sys.stderr)
                for p in rep.problems:
                    where = "base" if p.base else ("store" if p.degraded and not p.step and not p.object
                                                   else f"checkpoint {p.step}")
                    what = (f" {_p(p.file)}" if p.file else "") + (f" tensor {_p(p.region)}" if p.region else "")
                    print(f"{where}:{what + ':' if what else ''} {_p(p.message)}"
                          + (" (its other copy serves; nothing is lost; --repair rewrites it)" if p.degraded else "")
                          + (" (not checked, not damaged)" if p.unchecked else ""))
                if rep.ok:
                    print("ok", file=sys.stderr)
                elif rep.affected_steps:
                    print(f"damaged: checkpoints {', '.join(map(str, rep.affected_steps))}", file=sys.stderr)
                elif rep.unchecked_steps and not rep.degraded:
                    print(f"not checked: checkpoints {', '.join(map(str, rep.unchecked_steps))} decode beyond the "
                          "decode limit (raise TPDE_MAX_OUTPUT to check them)", file=sys.stderr)
                else:
                    print("degraded: nothing is lost, but a copy is damaged (tpde verify --repair)", file=sys.stderr)
            return 0 if rep.ok else 1
        if cmd == "stats":
            st = store.stats()
            if args.plot:
                _plot(st, args.plot)
            if args.json:
                print(json.dumps(st, indent=1))
                return 0
            print(f"{'step':>10}  {'raw':>10}  {'new bytes':>10}")
            for r in st["checkpoints"]:
                print(f"{r['step']:>10}  {_human(r['raw_bytes']):>10}  {_human(r['new_bytes']):>10}")
            print(f"total: {_human(st['raw_bytes'])} raw, {_human(st['disk_bytes'])} on disk "
                  f"({(st['ratio'] or 0):.2f}x)" + (f"; damaged, left out: checkpoints {', '.join(st['damaged'])}"
                                                    if st["damaged"] else ""))
            print("\nratio per tensor group:")
            for g, v in st["groups"].items():
                print(f"  {_p(g):<60} {v['ratio']:.2f}x" if v["ratio"] else f"  {_p(g):<60} -")
            return 0
    raise usage_error(f"unknown command {cmd}")


def _add(args: argparse.Namespace, usage_error: type, bar_factory: Any) -> int:
    if _SCHEME.match(args.store):
        raise usage_error(f"{args.store}: tpde cannot serve {args.store.split('://')[0]}:// stores; a store is a "
                          "local folder")
    if args.step is not None and len(args.paths) > 1:
        raise usage_error("--step takes one PATH")
    for p in args.paths:
        if not os.path.exists(p):
            raise usage_error(f"{p}: no such file or folder")
    lossy = None
    if args.lossy:
        lossy = {}
        for rule in args.lossy:
            pattern, sep, bound = rule.rpartition("=")
            try:
                lossy[pattern] = float(bound)
            except ValueError:
                sep = ""
            if not sep or not pattern:
                raise usage_error(f"--lossy {rule!r}: expected PATTERN=BOUND")
    parent: Any = None
    if args.parent is not None:
        if args.run is None:
            raise usage_error("--parent goes with --run NAME (the main run has no parent)")
        if args.parent == "base":
            parent = "base"
        else:
            prun, sep, pstep = args.parent.rpartition(":")
            if not sep or not prun:
                raise usage_error(f"--parent {args.parent!r}: expected RUN:STEP or base")
            parent = (prun, _parse_step(pstep, usage_error, latest=False, what="parent step"))
    if args.base is not None and args.reference not in (None, "base"):
        raise usage_error("--base goes with --reference base")
    out = []
    stop = Stop()
    # SIGTERM (a scheduler's kill) and Ctrl-C stop an add the same way: the
    # checkpoint being added is dropped, nothing of it is left, and those
    # committed before it stay.
    with stop.installed(), Store(args.store, keyframe_interval=args.keyframe_interval, reference=args.reference,
                                 base=args.base, lossy=lossy) as store:
        for p in args.paths:
            bar = bar_factory(f"adding {_p(os.path.basename(os.path.normpath(p)))}") if not args.quiet else None
            t0 = time.perf_counter()
            try:
                info = store.add(p, step=args.step, tags=args.tag, progress=bar, follow_links=args.follow_links,
                                 cancel=stop.event, run=args.run, parent=parent)
            except CancelledError:
                if bar is not None:
                    bar.close()
                print(f"tpde: error: interrupted by {stop.name()}: stopped; nothing of {p} was committed",
                      file=sys.stderr)
                return stop.exit_status()
            finally:
                if bar is not None:
                    bar.close()
            dt = time.perf_counter() - t0
            out.append(_info_json(info))
            if not args.quiet and not args.json:
                print(f"added checkpoint {info.step}: {len(info.files)} files, {_human(info.raw_bytes)} -> "
                      f"{_human(info.stored_bytes)} ({info.ratio:.2f}x) in {dt:.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


def _plot(st: Dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    steps = [r["step"] for r in st["checkpoints"]]
    axes[0].bar([str(s) for s in steps], [r["new_bytes"] / 2**20 for r in st["checkpoints"]])
    axes[0].set_title("bytes each checkpoint added (MiB)")
    axes[0].set_xlabel("step")
    groups = [(g, v["ratio"]) for g, v in st["groups"].items() if v["ratio"]]
    groups.sort(key=lambda x: -x[1])
    groups = groups[:20]
    axes[1].barh([g[-45:] for g, _ in groups], [r for _, r in groups])
    axes[1].set_title("ratio per tensor group")
    axes[1].tick_params(axis="y", labelsize=6)
    layers = sorted({layer for v in st["changed"].values() for layer in v})
    for layer in layers[:12]:
        xs = [int(s) for s, v in st["changed"].items() if layer in v]
        axes[2].plot(xs, [st["changed"][str(s)][layer] for s in xs], marker="o", label=layer[-30:])
    axes[2].set_title("fraction of elements changed vs the next checkpoint")
    axes[2].set_xlabel("step")
    if layers:
        axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__: List[str] = ["COMMANDS", "add_parsers", "run", "is_store"]
