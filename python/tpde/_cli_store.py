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
printed escaped. add, restore, rm and verify show a progress bar on a
terminal and end with a summary line on stderr; -q leaves out both. On an
s3:// store, add's bar and summary also say what was sent to the bucket,
and add --json and stats --json carry "requests": the S3 requests the
command sent, by kind (null on a local store).
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

from . import _cli_stats
from ._interrupt import Stop
from ._progress import Bar
from ._text import human as _human
from ._text import checkpoints, plural
from ._text import printable as _p
from .errors import CancelledError, InvalidArgumentError, TPDEError
from .store import CheckpointInfo, Store, check_step

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

COMMANDS = ("add", "restore", "ls", "rm", "verify", "stats")


def is_store(path: str) -> bool:
    """Whether path is (or may be: it cannot be read) a store. An s3://
    URL names a store (opening it says whether one is there)."""
    if path.startswith("s3://"):
        return True
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
    a.add_argument("store", metavar="STORE", help="the store: a folder, made by the first add")
    a.add_argument("paths", metavar="PATH", nargs="+",
                   help="a checkpoint: a folder (every file in it, with its relative path and mode) or one file")
    a.add_argument("--step", type=step_arg, default=None, metavar="N",
                   help="the checkpoint's step, 0 to 2**63-1, after the newest (one PATH only; default: N of a "
                        "folder named checkpoint-N, step-N or N, else the newest step + 1)")
    a.add_argument("--tag", action="append", default=None, metavar="T", help="a tag (repeat for more)")
    a.add_argument("--keyframe-interval", type=interval_arg, default=None, metavar="K",
                   help="for a new store: decode at most K frames per tensor, 1 to 1000 (default 10)")
    a.add_argument("--reference", choices=("previous", "base"), default=None,
                   help="for a new store: code each checkpoint against the previous one (default) or a base")
    a.add_argument("--base", default=None, metavar="PATH",
                   help="for a new store with --reference base: the base checkpoint, a folder or a file")
    a.add_argument("--lossy", action="append", default=None, metavar="PATTERN=BOUND",
                   help="for a new store: tensors matching PATTERN (file:name or name) may be stored within "
                        "BOUND (absolute); lossless otherwise (repeat for more)")
    a.add_argument("--run", default=None, metavar="NAME", help="add to the named run (default main)")
    a.add_argument("--parent", default=None, metavar="RUN:STEP|base",
                   help="a new run's parent: a checkpoint of another run, or the store's base; its first "
                        "checkpoint is coded against it")
    a.add_argument("--follow-links", action="store_true",
                   help="store what a symlink pointing outside an added folder points to (refused otherwise)")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary lines")
    a.add_argument("--json", action="store_true",
                   help="print what was added as JSON on stdout (a list: one checkpoint's info per PATH, with "
                        "\"requests\": the S3 requests its add sent, null on a local store)")

    r = sub.add_parser("restore", help="write a checkpoint's original files",
                       description="write checkpoint STEP of STORE into the folder DEST, every file "
                                   "byte-identical to what was added; all or nothing")
    r.add_argument("store", metavar="STORE", help="the store")
    r.add_argument("step", metavar="STEP", type=step_or_latest,
                   help="the checkpoint: its step, or 'latest' (the newest)")
    r.add_argument("dest", metavar="DEST", help="the folder to write into: new, or empty unless -f")
    r.add_argument("-f", "--force", action="store_true",
                   help="restore into a folder that is not empty, replacing the files of the same names")
    r.add_argument("--run", default=None, metavar="NAME", help="the run (default main)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")

    ls = sub.add_parser("ls", help="list a store's checkpoints", description="list the checkpoints of STORE")
    ls.add_argument("store", metavar="STORE", help="the store")
    ls.add_argument("--run", default=None, metavar="NAME", help="the run to list (default main)")
    ls.add_argument("--runs", action="store_true", help="list the store's runs instead")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")

    rm = sub.add_parser("rm", help="remove a checkpoint, or a run",
                        description="remove checkpoint STEP; checkpoints coded against it are re-coded first, "
                                    "so every other one still restores exactly")
    rm.add_argument("store", metavar="STORE", help="the store")
    # default False, not None: None is what "latest" parses to.
    rm.add_argument("step", metavar="STEP", type=step_or_latest, nargs="?", default=False,
                    help="the checkpoint: its step, or 'latest' (the newest); none with --run removes the run")
    rm.add_argument("--run", default=None, metavar="NAME",
                    help="the run (default main); with no STEP, remove the whole run")
    rm.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")

    v = sub.add_parser("verify", help="check a store", description="check every object and chain of STORE (exit 1 "
                       "and name what is affected if anything is damaged)")
    v.add_argument("store", metavar="STORE", help="the store")
    v.add_argument("--repair", action="store_true",
                   help="first remove what dead writers left behind, rewrite damaged copies of records and "
                        "manifests from their intact twins, and reclaim checkpoints no folder holds any more")
    v.add_argument("--shallow", action="store_true", help="check hashes only; do not decode (default: decode all)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line (problems are still printed)")

    st = sub.add_parser("stats", help="sizes, ratios and changes per checkpoint",
                        description="bytes each checkpoint added, ratio per tensor group (the same parameter of "
                                    "every layer), and the share of elements changed per layer")
    st.add_argument("store", metavar="STORE", help="the store")
    st.add_argument("--json", action="store_true",
                    help="print the figures as JSON, with \"requests\": the S3 requests this command sent "
                         "(null on a local store)")
    st.add_argument("--plot", metavar="FILE.png", default=None,
                    help="also draw them into FILE.png (needs matplotlib)")


def _info_json(i: CheckpointInfo) -> Dict[str, Any]:
    d = asdict(i)
    d["ratio"] = i.ratio if not i.damaged else None
    d["lossless"] = i.lossless
    return d


def _need_store(path: str, usage_error: type) -> None:
    if path.startswith("s3://"):
        return  # the store says whether it is one when it is opened
    if _SCHEME.match(path):
        raise usage_error(f"{path}: tpde cannot serve {path.split('://')[0]}:// stores; a store is a local folder "
                          "or s3://bucket/prefix")
    if not is_store(path):
        raise usage_error(f"{path}: not a tpde store")


def _parse_step(text: str, usage_error: type, *, latest: bool = True, what: str = "step") -> Optional[int]:
    try:
        return check_step(text, what, latest=latest)
    except InvalidArgumentError as e:
        raise usage_error(str(e)) from None


def _summary(args: argparse.Namespace, line: str) -> None:
    """A command's last line, on stderr (stdout is for what --json and the
    read commands print), unless -q."""
    if not args.quiet:
        print(line, file=sys.stderr)


def run(args: argparse.Namespace, usage_error: type) -> int:
    cmd = args.command
    if cmd == "add":
        return _add(args, usage_error)
    _need_store(args.store, usage_error)
    run_name = getattr(args, "run", None)
    with Store(args.store) as store:
        if cmd == "restore":
            info = store.info(args.step, run=run_name)  # the step restored, named once: "latest" may move
            t0 = time.perf_counter()
            with Bar(f"restoring checkpoint {info.step} ({plural(len(info.files), 'file')}, "
                     f"{_human(info.raw_bytes)})", quiet=args.quiet) as bar:
                out = store.restore(info.step, args.dest, force=args.force, run=run_name,
                                    progress=bar if bar.drawn else None)
            _summary(args, f"restored checkpoint {info.step}: {plural(len(info.files), 'file')}, "
                           f"{_human(info.raw_bytes)} into {_p(str(out))} in {time.perf_counter() - t0:.2f} s")
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
                print(f"damaged: {checkpoints(damaged)} (tpde verify names what)", file=sys.stderr)
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
                print(f"store {_p(args.store)}: {plural(len(st['checkpoints']), 'checkpoint')}, "
                      f"{_human(st['raw_bytes'])} raw "
                      + (f"in {_human(st['disk_bytes'])} on disk" if st.get("where") != "bucket"
                         else f"as {_human(st['disk_bytes'])} in the bucket")
                      + f" ({(st['ratio'] or 0):.2f}x); keyframe interval "
                      f"{cfg.get('keyframe_interval')}, reference {cfg.get('reference')}, {lossy}")
                if st["damaged"]:
                    print(f"damaged: {checkpoints(list(st['damaged']))} (tpde verify names what)")
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
                  f"{plural(len(info.files), 'file')}, {_human(info.raw_bytes)} in {_human(info.stored_bytes)} "
                  f"({info.ratio:.2f}x), at most {plural(info.max_chain, 'frame')} per tensor, "
                  + ("bit-exact" if info.lossless else f"lossy, max error {info.max_error:.3g}"))
            width = max([len(_p(f.path)) for f in info.files] + [4])
            for f in info.files:
                n = "-" if f.tensors is None or (f.tensors == 0 and f.layout == "raw") else plural(f.tensors, "tensor")
                print(f"  {_p(f.path):<{width}}  {_human(f.size):>10}  {f.layout:<12}  {n:>13}"
                      + (f"  ({_p(f.note)})" if f.note else ""))
            if info.damaged:
                print(f"damaged: {_p(info.problem)}")
                return 1
            return 0
        if cmd == "rm":
            if args.step is False and run_name is None:
                raise usage_error("rm needs STEP (or --run NAME to remove a whole run)")
            t0 = time.perf_counter()
            if args.step is False:
                with Bar(f"removing run {_p(run_name)}", quiet=args.quiet):
                    store.remove_run(run_name)
                _summary(args, f"removed run {_p(run_name)} in {time.perf_counter() - t0:.2f} s")
                return 0
            held = store.steps(run=run_name) if args.step is None else []
            step = held[-1] if held else args.step  # "latest": named once, as restore does
            in_run = "" if run_name is None else f" of run {_p(run_name)}"
            with Bar(f"removing checkpoint {step}{in_run} (re-coding what was coded against it)", quiet=args.quiet):
                store.remove(step, run=run_name)
            _summary(args, f"removed checkpoint {step}{in_run} in {time.perf_counter() - t0:.2f} s")
            return 0
        if cmd == "verify":
            t0 = time.perf_counter()
            how = "hashes of" if args.shallow else "decoding"
            with Bar(f"verifying {_p(args.store)} ({how} every object)" + (", after a repair" if args.repair else ""),
                     quiet=args.quiet or args.json, unit="checkpoints") as bar:
                rep = store.verify(deep=not args.shallow, repair=args.repair, progress=bar if bar.drawn else None)
            took = f"in {time.perf_counter() - t0:.2f} s"
            if args.json:
                print(json.dumps({"ok": rep.ok, "affected_steps": rep.affected_steps, "cleaned": rep.cleaned,
                                  "problems": [asdict(p) for p in rep.problems]}, indent=1))
            else:
                if rep.cleaned:
                    c = rep.cleaned
                    print(f"removed {plural(c['temporary'], 'unfinished file')}, "
                          f"{plural(c['objects'], 'unreferenced object')}, {plural(c['manifests'], 'old manifest')}; "
                          f"rewrote {plural(c.get('copies', 0), 'damaged or missing copy', 'damaged or missing copies')}"
                          + (" (readers busy: objects kept)" if c.get("readers_busy") else ""),
                          file=sys.stderr)
                    if c.get("reclaimed"):
                        print(f"removed {'checkpoints' if len(c['reclaimed']) > 1 else 'checkpoint'} no folder "
                              "holds any more: " + ", ".join(map(str, c["reclaimed"])), file=sys.stderr)
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
                    _summary(args, f"ok: every object and chain checked ({'hashes only' if args.shallow else 'decoded'}"
                                   f") {took}")
                elif rep.affected_steps:
                    print(f"damaged: {checkpoints(rep.affected_steps)}", file=sys.stderr)
                elif rep.unchecked_steps and not rep.degraded:
                    print(f"not checked: {checkpoints(rep.unchecked_steps)} decode beyond the "
                          "decode limit (raise TPDE_MAX_OUTPUT to check them)", file=sys.stderr)
                else:
                    print("degraded: nothing is lost, but a copy is damaged (tpde verify --repair)", file=sys.stderr)
            return 0 if rep.ok else 1
        if cmd == "stats":
            st = store.stats()
            reference = store.config.get("reference", "previous")
            # What this command cost in the bucket: the Store was opened
            # for it, so its counts are the command's (null: a local store).
            st["requests"] = store.requests()
            if args.plot:
                _plot(st, args.plot, reference)
            if args.json:
                print(json.dumps(st, indent=1))
                return 0
            print(_cli_stats.text(st, reference))
            return 0
    raise usage_error(f"unknown command {cmd}")


def _add(args: argparse.Namespace, usage_error: type) -> int:
    if _SCHEME.match(args.store) and not args.store.startswith("s3://"):
        raise usage_error(f"{args.store}: tpde cannot serve {args.store.split('://')[0]}:// stores; a store is a "
                          "local folder or s3://bucket/prefix")
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
            before = store._transfer()  # None for a local store (a missing store: opened by the add)
            bar = Bar(f"adding {_p(os.path.basename(os.path.normpath(p)))}", quiet=args.quiet,
                      status=_sent_status(store, before))
            t0 = time.perf_counter()
            try:
                info = store.add(p, step=args.step, tags=args.tag, progress=bar if bar.drawn else None,
                                 follow_links=args.follow_links, cancel=stop.event, run=args.run, parent=parent)
            except CancelledError:
                bar.close()
                print(f"tpde: error: interrupted by {stop.name()}: stopped; nothing of {p} was committed",
                      file=sys.stderr)
                return stop.exit_status()
            finally:
                bar.close()
            dt = time.perf_counter() - t0
            cost = _since(before, store._transfer())
            out.append({**_info_json(info), "requests": None if cost is None else _requests_of(cost)})
            if not args.json:
                sent = "" if cost is None else (f"; sent {plural(cost['uploaded_objects'], 'object')} "
                                                f"({_human(cost['uploaded_bytes'])}) to the bucket")
                _summary(args, f"added checkpoint {info.step}: {plural(len(info.files), 'file')}, "
                               f"{_human(info.raw_bytes)} -> {_human(info.stored_bytes)} ({info.ratio:.2f}x) "
                               f"in {dt:.2f} s{sent}")
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


def _since(before: Optional[Dict[str, int]], after: Optional[Dict[str, int]]) -> Optional[Dict[str, int]]:
    """The traffic between two readings of Store._transfer; None for a
    local store. before is None when the add opened the store's first
    handle (a new store): everything after is the add's."""
    if after is None:
        return None
    return {k: v - (before or {}).get(k, 0) for k, v in after.items()}


def _requests_of(t: Dict[str, int]) -> Dict[str, int]:
    """The request counts of a reading (Store.requests()'s keys)."""
    return {k: t[k] for k in ("get", "put", "head", "list", "delete", "parts", "multipart", "other",
                              "bytes_sent", "bytes_received")}


def _sent_status(store: Store, before: Optional[Dict[str, int]]) -> Any:
    """The status of an add's bar to an s3:// store: the objects and bytes
    the bucket has taken out of those queued for it, asked of the library
    at each redraw (one call, which never waits for the add). A local
    store shows none."""
    if not store.path.startswith("s3://"):
        return None

    def status() -> Optional[str]:
        try:
            t = _since(before, store._transfer())
        except TPDEError:
            return None  # the handle closed as the add ended: the bar closes too
        if t is None:
            return None  # the add has not opened its writer yet
        return (f"sent {_human(t['uploaded_bytes'])} / {_human(t['queued_bytes'])} "
                f"({t['uploaded_objects']:,} / {plural(t['queued_objects'], 'object')})")

    return status


def _plot(st: Dict[str, Any], path: str, reference: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidArgumentError("--plot needs matplotlib (pip install matplotlib)") from None
    _cli_stats.plot(st, path, reference)


__all__: List[str] = ["COMMANDS", "add_parsers", "run", "is_store"]
