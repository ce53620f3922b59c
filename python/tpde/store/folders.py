"""Files and folders on disk: walking a folder (or one file) to add it,
symlinks and the store itself guarded; coding each file into the store;
and writing a state dict restored from Python into a folder, all or
nothing."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from ctypes import byref
from typing import Any, Callable, Iterator, List, Optional, Tuple

from .. import _torchfile
from .._atomic import fsync_dir
from .._interrupt import run_cancellable
from .._text import printable
from ..errors import CancelledError, InvalidArgumentError, TPDEError, TPDEIOError, require
from .handle import _json_arg, _path_arg, _utf8, call


def _add_files(h: int, what: Any, store_path: str, follow_links: bool, name: Optional[str],
               progress: Optional[Callable[[int, int], None]], cancel: Optional[Any]) -> None:
    """Add the file or folder what to the checkpoint or part begun on
    handle h; name renames a single file. progress(done_bytes,
    total_bytes) as files are coded; cancel (a threading.Event) stops it."""
    files = list(_walk(_path_arg(what, "the path to add"), store_path, follow_links))
    if name is not None:
        if len(files) != 1 or not os.path.isfile(os.fspath(what)):
            raise InvalidArgumentError("name= names a single file; a folder's files keep their paths")
        files = [(name, files[0][1])]
    total = sum(os.stat(p).st_size for _, p in files)
    done = 0
    for rel, p in files:
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"adding {os.fspath(what)} was cancelled; nothing was committed")
        _add_file(h, rel, p, cancel)
        done += os.stat(p).st_size
        if progress is not None:
            progress(done, total)


def _add_file(h: int, rel: str, p: str, cancel: Optional[Any]) -> None:
    hints, note = _torchfile.hints(p)
    hj, hn = _json_arg(hints)
    args = (h, _utf8(rel, "file name"), os.fsencode(p), hj, hn, note.encode("utf-8") if note else None, None)
    run_cancellable(lambda flag: call("tpde_store_add_file", *args, byref(flag)), cancel)


def _inside(path: str, folder: str) -> bool:
    """Whether the real path path is folder or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(path: str, store_path: str, follow_links: bool) -> Iterator[Tuple[str, str]]:
    """(relative path, path to read) of each file to add: the file itself,
    or every file under a folder, sorted. A symlink to a file inside the
    folder is stored as that file; one to a folder inside is not entered
    (its files are added under their own names); one pointing outside is
    refused unless follow_links. Anything that is not a regular file (a
    FIFO, a socket, a device, a dangling link) is refused: nothing is
    skipped silently."""
    real = os.path.realpath(path)
    real_store = os.path.realpath(store_path)
    if _inside(real_store, real):
        raise InvalidArgumentError(f"{path} holds the store {store_path}: tpde will not add a store's own files "
                                   "to it (keep the store outside the folders you add)")
    if _inside(real, real_store):
        raise InvalidArgumentError(f"{path} is inside the store {store_path}")
    try:
        st = os.stat(path)
    except OSError as e:
        raise TPDEIOError(e.errno, f"{path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        yield os.path.basename(path), path  # a file (or a stream) the user named
        return
    found: List[Tuple[str, str]] = []
    entered = {(st.st_dev, st.st_ino)}
    todo = [(path, "")]
    while todo:
        folder, prefix = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise TPDEIOError(e.errno, f"{folder}: {e.strerror} (while adding {path})") from None
        for e in entries:
            rel = prefix + e.name
            try:
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    inside = _inside(target, real)
                    if not inside and not follow_links:
                        raise InvalidArgumentError(
                            f"{printable(e.path)} is a symlink to {printable(target)}, outside {path}: tpde stores "
                            "what a link outside the folder points to only when asked (follow_links=True, "
                            "tpde add --follow-links)")
                    try:
                        tst = os.stat(e.path)
                    except FileNotFoundError:
                        raise TPDEIOError(errno.ENOENT, f"{e.path}: a symlink to {target}, which does not exist") \
                            from None
                    if _inside(target, real_store) or _inside(real_store, target):
                        raise InvalidArgumentError(f"{printable(e.path)} is a symlink to {printable(target)}, which "
                                                   f"is (or holds) the store {store_path}: tpde will not add a "
                                                   "store's own files to it")
                    if stat.S_ISDIR(tst.st_mode):
                        if not inside and (tst.st_dev, tst.st_ino) not in entered:
                            entered.add((tst.st_dev, tst.st_ino))
                            todo.append((e.path, rel + "/"))
                        continue
                    mode = tst.st_mode
                else:
                    mode = e.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        todo.append((e.path, rel + "/"))
                        continue
            except OSError as err:
                if isinstance(err, TPDEError):
                    raise
                raise TPDEIOError(err.errno, f"{e.path}: {err.strerror} (while adding {path})") from None
            if not stat.S_ISREG(mode):
                raise InvalidArgumentError(f"{printable(e.path)} is not a regular file (a FIFO, socket or device); "
                                           "tpde adds regular files")
            found.append((rel, e.path))
    if not found:
        raise InvalidArgumentError(f"{path} holds no file")
    found.sort()
    yield from found


def _restore_state_dict(sd: Any, dest: str, force: bool) -> None:
    """_write_state_dict, with the OS's refusals as TPDEIOError, the type
    (and errno) a restore by Go raises, naming the path refused."""
    try:
        _write_state_dict(sd, dest, force)
    except OSError as e:
        if isinstance(e, TPDEError):
            raise
        raise TPDEIOError(e.errno, f"{e.filename or dest}: {e.strerror or e}") from e


def _write_state_dict(sd: Any, dest: str, force: bool) -> None:
    """torch.save(sd) as dest/state_dict.pt, with Restore's promises (Go,
    core/store/read.go): all or nothing (written into a new hidden folder,
    beside dest when dest is missing and then renamed to it, inside dest
    when it exists and then moved out of it), a non-empty dest refused
    unless force, nothing written through a link inside dest."""
    torch = require("torch", "restoring a state dict added from Python (torch.save)")

    dest = os.path.abspath(dest)
    if os.path.islink(dest):
        target = os.path.realpath(dest)
        if not os.path.exists(target):
            raise TPDEIOError(errno.ENOENT, f"{dest}: a symlink to {target}, which does not exist")
        dest = target
    parent = os.path.dirname(dest) or "."
    exists = os.path.lexists(dest)
    if exists:
        if not os.path.isdir(dest):
            raise TPDEIOError(errno.ENOTDIR, f"{dest}: exists and is not a folder")
        if os.listdir(dest) and not force:
            raise TPDEIOError(errno.EEXIST, f"{dest}: is not empty; restore into a new or empty folder, or pass "
                                            "force=True (--force) to replace the files of the same names")
    try:
        if exists:
            stage = tempfile.mkdtemp(prefix=".tpde-restore-", dir=dest)
        else:
            stage = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)[:200]}.tpde-restore-", dir=parent)
    except OSError as e:
        # Named as the restore from Go names it: dest, which the caller
        # asked for, not the temporary name beside it.
        where = "in it" if exists else f"beside itself first, in {parent}"
        raise TPDEIOError(e.errno, f"{dest}: {e.strerror} (a restore writes {where})") from None
    try:
        os.chmod(stage, 0o777 & ~_umask())
        with open(os.path.join(stage, "state_dict.pt"), "xb") as fh:
            torch.save(sd, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if exists:
            target = os.path.join(dest, "state_dict.pt")
            if os.path.isdir(target) and not os.path.islink(target):
                raise TPDEIOError(errno.EISDIR, f"{target}: is a folder")
            os.replace(os.path.join(stage, "state_dict.pt"), target)  # replaces a link itself, never through it
            os.rmdir(stage)
            fsync_dir(dest)
        else:
            os.rename(stage, dest)  # fails if dest appeared meanwhile
            fsync_dir(parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
