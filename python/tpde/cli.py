"""The ``tpde`` command.

    tpde compress FILE [-o OUT] [-f] [--threads N] [--quiet]
    tpde decompress FILE [-o OUT] [-f] [--threads N] [--quiet]
    tpde info FILE [--json]
    tpde add STORE PATH... [--step N] [--tag T]      (and restore, ls, info, rm, verify, stats:
                                                    see python/tpde/_cli_store.py)

Work that takes more than half a second shows a progress bar on stderr
when stderr is a terminal and -q is not given (python/tpde/_progress.py);
every command that changes something ends with a one-line summary, which
-q leaves out.

compress and decompress never replace an existing OUT (FILE.tpde, FILE, or
the -o path) unless -f/--force is given, as gzip and zstd: the refusal is
made by the step that publishes the output, so a file that appears while
tpde works is not replaced either. Even with -f, an OUT that is a symbolic
link (tpde never writes through one: it would replace the file it points
to), a directory, a FIFO or a device, or that is FILE itself, is refused.

Exit status: 0 success; 1 corrupt or unsupported input, a failed verify, or
an I/O or other failure; 2 usage errors (bad arguments, missing input file,
an output that exists without -f or that -f cannot replace, output = input);
130 / 143 when Ctrl-C / SIGTERM stopped a compress or decompress (nothing
was written). An interrupt either stops the work and leaves nothing, or, if
it comes too late to stop it, the work completes and is reported as a
success: never both.
Every error is one line on stderr, ``tpde: error: ...``; set TPDE_DEBUG=1 to
see the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import traceback
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from ._interrupt import Stop
from ._progress import Bar
from ._text import human as _human
from ._text import plural, printable
from . import __version__, _cli_store
from ._memory import parse_size
from .codec import (_compress_file, _decompress_file, _original_size, _output_flags, _output_path, _refuse_same,
                    file_info)
from .errors import (
    CancelledError,
    CorruptDataError,
    DecodeLimitError,
    InvalidArgumentError,
    TPDEError,
    TPDEIOError,
    UnsupportedFormatError,
)

PROG = "tpde"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints usage plus a message and exits; tpde reports every
    # error as a single line, so usage errors are raised to main instead.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{PROG} --help')")


def _threads_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}") from None
    if not 0 <= n < 2**31:
        raise argparse.ArgumentTypeError(f"thread count must be >= 0, got {n}")
    return n


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Lossless compression for deep-learning checkpoints.",
                epilog="Work that takes more than half a second shows a progress bar when stderr is a terminal "
                       "($TPDE_PROGRESS_DELAY sets the delay in seconds); -q on a command leaves out the bar and "
                       "its summary line. 'tpde COMMAND --help' describes each command.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, what in (("compress", "compress FILE (a .safetensors or torch checkpoint, or any file) into a "
                                     "tpde file, losslessly"),
                       ("decompress", "restore the original file, byte for byte, from a tpde file")):
        compress = name == "compress"
        c = sub.add_parser(name, help=what, description=what)
        c.add_argument("file", metavar="FILE",
                       help="the file to compress (a pipe or FIFO works too)" if compress else
                       "a tpde file (tpde compress made it)")
        c.add_argument("-o", "--output", metavar="OUT",
                       help=("output path (default: FILE.tpde)" if compress else
                             "output path (default: FILE without its .tpde suffix, else FILE.restored)")
                       + "; an existing one is refused unless -f")
        c.add_argument("-f", "--force", action="store_true",
                       help="replace an existing output file (never a symlink, directory or FIFO, nor FILE itself)")
        c.add_argument("--threads", type=_threads_arg, default=0, metavar="N",
                       help="worker threads (default 0: one per CPU)")
        c.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
        if not compress:
            c.add_argument("--max-output", type=_size_arg, default=None, metavar="SIZE",
                           help="refuse a file that restores to more than SIZE bytes (K/M/G/T suffixes; "
                                "default $TPDE_MAX_OUTPUT, else no limit)")
    i = sub.add_parser("info", help="describe a tpde file, a compressed checkpoint, or a store",
                       description="describe a tpde file (its tensors, sizes and coding), a compressed "
                                   "checkpoint, or a store (with STEP: one of its checkpoints)")
    i.add_argument("file", metavar="FILE", help="a tpde file, a compressed checkpoint, or a store")
    i.add_argument("step", metavar="STEP", nargs="?", default=None,
                   help="for a store: the checkpoint to describe, a step number or 'latest' "
                        "(default: the whole store)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument("--run", default=None, metavar="NAME", help="for a store: the run (default main)")
    i.add_argument("--limit", type=int, default=10000, metavar="N",
                   help="for a tpde file: list at most N segments (default 10000; all are checked)")
    _cli_store.add_parsers(sub, _UsageError)
    return p


def _size_arg(text: str) -> int:
    try:
        return parse_size(text, "--max-output")
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ratio(orig: int, stored: int) -> str:
    return f"{orig / stored:.3f}x" if stored else "-"


def _check_input(path: str) -> None:
    if not os.path.exists(path):
        raise _UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise _UsageError(f"{path}: is a directory")


def _check_output(src: str, out: str, force: bool) -> None:
    """Refuse, before any work, an output tpde must not write. The library
    makes the same refusals again when it publishes the output (see
    _output_flags), so this is for a clear message and for not reading a
    stream to its end first, not the guarantee."""
    try:
        _refuse_same(src, out)
    except InvalidArgumentError as e:
        raise _UsageError(f"{e}; not replaced even with -f") from None
    try:
        st = os.lstat(out)
    except OSError:
        return  # nothing there, or a missing or unreadable folder, which the library reports
    if stat.S_ISLNK(st.st_mode):
        raise _UsageError(f"{out}: is a symbolic link; tpde never writes through one, even with -f "
                          "(remove it, or name another output with -o)")
    if not force:
        raise _UsageError(f"{out}: already exists; not overwritten (-f replaces it)")
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise _UsageError(f"{out}: is {what}; not replaced even with -f")


def _convert(args: argparse.Namespace) -> int:
    _check_input(args.file)
    compress = args.command == "compress"
    out_path = os.fsdecode(_output_path(args.file, args.output, compress))
    _check_output(args.file, out_path, args.force)
    # With -f a regular file is replaced, but a symlink that appears
    # meanwhile is replaced itself, never written through.
    flags = _output_flags(args.force, follow_symlinks=False)
    if not compress:
        _refuse_non_tpde(args.file)
    size = (os.path.getsize(args.file) if compress else _original_size(args.file)) if os.path.isfile(args.file) else 0
    what = "compressing" if compress else "decompressing"
    bar = Bar(f"{what} {printable(os.path.basename(args.file))}", quiet=args.quiet, total=size or None)
    stop = Stop()
    note = None
    try:
        with stop.installed():
            progress = bar if bar.drawn and size else None
            if compress:
                out, note = _compress_file(args.file, out_path, threads=args.threads, progress=progress,
                                           cancel=stop.event, flags=flags)
            else:
                out = _decompress_file(args.file, out_path, threads=args.threads, progress=progress,
                                       cancel=stop.event, max_output_bytes=args.max_output, flags=flags)
    except TPDEIOError as e:
        if e.errno == errno.EEXIST and not args.force:
            # Created by someone else while tpde worked: the same refusal.
            raise _UsageError(f"{out_path}: already exists; not overwritten (-f replaces it)") from None
        raise
    except CancelledError:
        bar.close()
        name = stop.name()
        _fail(f"interrupted by {name}: stopped, nothing was written")
        return stop.exit_status()
    finally:
        bar.close()
    if not args.quiet:
        # Sizes from the output: the input may have been a pipe.
        if compress:
            orig, stored = _original_size(out), os.path.getsize(out)
            a, b = orig, stored
        else:
            orig = os.path.getsize(out)
            a = stored = os.path.getsize(args.file) if os.path.isfile(args.file) else 0
            b = orig
        print(f"{args.file} -> {out}: {_human(a)} -> {_human(b)} (ratio {_ratio(orig, stored)})")
        if compress and note:
            print(f"  {note}")
    return 0


def _methods(seg: Dict[str, Any]) -> str:
    m = seg.get("methods") or {}
    if not m:
        return str(seg.get("kind", ""))
    return " ".join(f"{k}:{v}" for k, v in sorted(m.items(), key=lambda kv: (-kv[1], kv[0])))


def _is_bundle(path: str) -> bool:
    from ._bundle import BUNDLE_MAGIC

    with open(path, "rb") as f:
        return f.read(4) == BUNDLE_MAGIC


# What opens a tpde file, a file holding one frame, and a compressed
# checkpoint (docs/FORMAT.md).
_MAGICS = (b"\x89TPC", b"\x89TPF", b"\x89TPB")


def _kind_of(head: bytes) -> str:
    """What a file that is not a tpde file looks like, from its first bytes."""
    from ._torchlegacy import sniff

    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "a safetensors file, uncompressed"
    if head[:4] == b"PK\x03\x04":
        return "a zip file (a torch checkpoint?), uncompressed"
    if sniff(head):
        return "a legacy torch file, uncompressed"
    if not head:
        return "an empty file"
    return ""


def _refuse_non_tpde(path: str) -> None:
    """Raise UnsupportedFormatError for a regular file that does not open
    like a tpde file, saying what it looks like (a pipe is left to the
    library: reading ahead of it would lose its bytes)."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(32)
    if head[:4] in _MAGICS:
        return
    kind = _kind_of(head)
    raise UnsupportedFormatError("not a tpde file" + (f" ({kind}; tpde compress makes one of it)" if kind else ""))


def _bundle_info(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_info

    ci = checkpoint_info(args.file)
    if args.json:
        print(json.dumps(ci, indent=2, default=list))
        return 0
    orig, stored = ci.get("original_size", 0), ci.get("compressed_size", 0)
    kind = ci.get("checkpoint_type", "?")
    ref = f" against the {ci['reference']} checkpoint" if ci.get("reference") else ""
    ep = f", epoch {ci['epoch']}" if ci.get("epoch") is not None else ""
    lossy = "lossless" if ci.get("lossless", True) else f"lossy, bound {ci.get('error_bound')}"
    lines = [
        f"{args.file}: tpde checkpoint {ci.get('format_version', '?')}, {kind}{ref}{ep}, {lossy}",
        f"size: {orig:,} -> {stored:,} bytes ({_human(orig)} -> {_human(stored)}), ratio {_ratio(orig, stored)}",
        "",
    ]
    rows = [("name", "dtype", "shape", "original -> stored", "kind")]
    for t in ci["tensors"]:
        k = t["kind"] + (" (identical)" if t["identical"] else "") + (
            f" lossy max_error {t['max_error']:.3g}" if t["lossy"] else "")
        rows.append((t["name"], t["dtype"], "x".join(str(d) for d in t["shape"]) or "scalar",
                     f"{t['raw_size']:,} -> {t['frame_size']:,}", k))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    print("\n".join(line.rstrip() for line in lines))
    return 0


def _info(args: argparse.Namespace) -> int:
    _check_input(args.file)
    _refuse_non_tpde(args.file)
    if _is_bundle(args.file):
        return _bundle_info(args)
    if args.limit < 1:
        raise _UsageError(f"--limit must be at least 1, got {args.limit}")
    fi = file_info(args.file, max_segments=args.limit)
    if args.json:
        print(json.dumps(fi, indent=2))
        return 0
    orig, stored = fi.get("original_size", 0), fi.get("compressed_size", 0)
    kind = "tpde file" if fi.get("format") == "file" else "tpde frame"
    src = f", source {fi['source']}" if fi.get("source") else ""
    lines = [
        f"{args.file}: {kind} {fi.get('version', '?')}{src}",
        f"size: {orig:,} -> {stored:,} bytes ({_human(orig)} -> {_human(stored)}), ratio {_ratio(orig, stored)}",
        "",
    ]
    rows = [("name", "dtype", "shape", "original -> stored", "methods")]
    for n, seg in enumerate(fi.get("segments") or []):
        name = seg.get("name") or (f"[{seg['kind']} segment {n}]" if seg.get("kind") != "frame" else f"[frame {n}]")
        shape = seg.get("shape")
        rows.append((
            name,
            seg.get("dtype") or "-",
            "x".join(str(d) for d in shape) if shape else ("scalar" if shape == [] else "-"),
            f"{seg.get('original_size', 0):,} -> {seg.get('stored_size', 0):,}",
            _methods(seg),
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    more = int(fi.get("segment_count", 0)) - len(fi.get("segments") or [])
    if more > 0:
        lines.append(f"... and {plural(more, 'more segment')}, all checked (--limit N lists more)")
    print("\n".join(line.rstrip() for line in lines))
    return 0


def _fail(message: str) -> None:
    # One line, whatever the message holds: a message can quote a name read
    # from a file or a store, so control characters are shown escaped.
    print(f"{PROG}: error: {printable(' '.join(message.split()))}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tpde command with argv (default sys.argv[1:]); return the exit status."""
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except _UsageError as e:
        _fail(str(e))
        return 2
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    store_cmd = args.command in _cli_store.COMMANDS or (args.command == "info" and _cli_store.is_store(args.file))
    if store_cmd:
        if args.command == "info":
            args.store = args.file
        args.file = args.store  # what error messages name
    elif args.command == "info" and (args.step is not None or args.run is not None):
        _fail(f"{args.file}: not a tpde store, so {'STEP' if args.step is not None else '--run'} does not apply")
        return 2
    try:
        if store_cmd:
            return _cli_store.run(args, _UsageError)
        return _info(args) if args.command == "info" else _convert(args)
    except _UsageError as e:
        _fail(str(e))
        return 2
    except (CorruptDataError, UnsupportedFormatError, DecodeLimitError) as e:
        # Named once: the library's messages often name the file already.
        msg = str(e)
        _fail(msg if msg.startswith(f"{args.file}:") else f"{args.file}: {msg}")
        return 1
    except InvalidArgumentError as e:
        _fail(str(e))
        return 2
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `tpde info f | head`):
        # stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (TPDEError, OSError) as e:
        _fail(str(e) if isinstance(e, TPDEError) else f"{getattr(e, 'filename', None) or args.file}: {e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
        if os.environ.get("TPDE_DEBUG"):
            traceback.print_exc()
        _fail(f"internal error (please report, with TPDE_DEBUG=1 for the traceback): {type(e).__name__}: {e}")
        return 1


__all__: List[str] = ["main"]
