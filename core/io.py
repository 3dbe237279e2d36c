"""Atomic writes, safe replacement of folders and files, and safe, checked reads of JSON and safetensors.

Every write goes to a temporary sibling of its target (a file or a whole folder) and is renamed into
place, so a crash never leaves a half-written target behind. Replacing an existing target swaps the two
in one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``; two renames elsewhere) and removes the old
one last, and only after checking that it is something this tool wrote. Temporary siblings are named
``.<name>-<digest>.new-<host>-<pid>-<random>``; those of a process of this host that no longer runs are
removed by the next write to the same target. New files and folders get the ordinary permissions of the umask (0644 / 0755
under umask 022). Checked reads (JSON, safetensors, model folders) are in core.reads.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from core.errors import OutputError, OutputExistsError
from core.reads import MODEL_CONFIG, MODEL_WEIGHTS

NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


# -------------------------------------------------------------------------------------------------
# Temporary siblings and the atomic swap
# -------------------------------------------------------------------------------------------------

def _sibling_prefix(target: Path) -> str:
    """``.<first 64 characters of the name>-<8 hex digits of its hash>.``: short enough for any name."""
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:8]
    return f".{target.name[:64]}-{digest}."


def _host_tag() -> str:
    """6 hex digits of the host name: a sibling's pid is only checked on the host (pid namespace) that made it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _sibling_name(target: Path, role: str = "new") -> Path:
    """A fresh name ``.<prefix><role>-<host>-<pid>-<random>`` beside ``target``. Roles: ``new`` (what is being
    written), ``old`` (a target set aside during a swap without renameat2)."""
    return target.parent / f"{_sibling_prefix(target)}{role}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _new_sibling(target: Path, folder: bool) -> Path:
    """Create an empty temporary folder (or file) beside ``target``, with the umask's permissions."""
    for _ in range(100):
        path = _sibling_name(target)
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{target.parent}: could not create a temporary sibling of {target.name}")


def new_sibling_file(target: str | Path) -> Path:
    """An empty temporary file beside ``target`` (for ``publish``), with the umask's permissions."""
    return _new_sibling(Path(target), folder=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_siblings(target: str | Path) -> list[Path]:
    """Clean up after writes to ``target`` that were killed: their ``new`` siblings are removed; an ``old``
    sibling (a previous export set aside mid-swap) is put back when ``target`` is missing, else removed (the
    new one took its place). Siblings of processes still running here, or made on another host, are left
    alone. Returns the paths removed or restored; each is reported as a warning."""
    target = Path(target)
    handled = []
    if not target.parent.is_dir():
        return handled
    log = logging.getLogger(__name__)
    for path in sorted(target.parent.iterdir()):
        role, _, rest = path.name[len(_sibling_prefix(target)):].partition("-")
        host, _, pid = rest.partition("-")
        pid = pid.split("-", 1)[0]
        if (not path.name.startswith(_sibling_prefix(target)) or role not in ("new", "old") or host != _host_tag()
                or not pid.isdigit() or _pid_alive(int(pid))):
            continue
        if role == "old" and not os.path.lexists(target):
            os.rename(path, target)
            log.warning("restored %s from %s, set aside by a write that was killed", target, path.name)
        else:
            _remove(path)
            log.warning("removed %s, left behind by a killed write to %s", path, target)
        handled.append(path)
    return handled


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (both must exist); False where the system cannot.

    Hand-written because neither the standard library nor a maintained package exposes Linux's
    ``renameat2(RENAME_EXCHANGE)``, the one call that swaps two paths with no instant where either is absent."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):  # EPERM: a sandbox refusing the call
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_no_clobber(a: Path, b: Path) -> None:
    """Rename ``a`` to the free name ``b``; OutputExistsError when ``b`` is taken (for a folder ``a``, an
    empty folder at ``b`` counts as free). Never replaces anything at ``b``."""
    taken = (f"{b} exists (it appeared while this run was writing: another export to the same path?); "
             "nothing was replaced; choose another path or pass --overwrite")
    if a.is_dir():
        try:
            os.rename(a, b)  # replaces an empty folder only; fails on anything else
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputExistsError(taken) from exc
            raise
        return
    try:
        os.link(a, b)  # a hard link never replaces an existing name
    except FileExistsError as exc:
        raise OutputExistsError(taken) from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hard links on this file system
            raise
        try:
            os.close(os.open(b, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # claim the name, then fill it
        except FileExistsError as taken_exc:
            raise OutputExistsError(taken) from taken_exc
        os.replace(a, b)
        return
    os.unlink(a)


def _swap(a: Path, b: Path) -> None:
    """Swap two existing paths: atomically where the system can, else by three renames, undone on failure
    (a kill between them leaves the old ``b`` as an ``old`` sibling, which ``remove_stale_siblings`` restores)."""
    if _exchange(a, b):
        return
    aside = _sibling_name(b, "old")
    os.rename(b, aside)
    try:
        _move_no_clobber(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)


def publish(new: Path, target: Path, replaceable: Callable[[Path], bool] | None = None) -> None:
    """Move the finished ``new`` (a sibling of ``target``) onto ``target``.

    ``replaceable`` None: ``target`` must not exist (an empty folder counts as absent for a folder), also
    if it appeared while ``new`` was being written; OutputExistsError otherwise, and nothing is touched.
    Else an existing ``target`` is swapped with ``new`` in one step; the old one, now at ``new``'s path, is
    checked with ``replaceable`` (an exception counts as "no") and removed, or, when the check says no, the
    swap is undone and OutputExistsError raised. Whenever this raises, ``target`` is as it was and ``new``
    (our own export) is removed."""
    try:
        if replaceable is None or not os.path.lexists(target):
            _move_no_clobber(new, target)
            return
        try:
            _swap(new, target)
        except FileNotFoundError:  # the target went away after the check: nothing to replace
            _move_no_clobber(new, target)
            return
    except BaseException:
        if os.path.lexists(new):
            _remove(new)
        raise
    try:  # ``new`` holds the old target now
        try:
            ok = bool(replaceable(new))
        except Exception:  # noqa: BLE001 - a check that fails on a strange target means "not ours"
            ok = False
    except BaseException:  # interrupted: put the old target back before stopping
        _swap(new, target)
        _remove(new)
        raise
    if not ok:
        _swap(new, target)
        _remove(new)
        raise OutputExistsError(f"{target}: changed while this run was writing and is no longer something this "
                                "tool wrote; left as it is")
    _remove(new)


def _umask_permissions(tmp: Path, mode: int) -> None:
    """Give ``tmp`` and, for a folder, everything in it the permissions that the umask gave the temporary sibling
    (``mode``: 0644 / 0755 under umask 022), as a library may create its files private (safetensors: 0600)."""
    for path in [tmp, *(tmp.rglob("*") if tmp.is_dir() else ())]:
        wanted = mode if path.is_dir() else mode & 0o666
        if not path.is_symlink() and path.stat().st_mode & 0o777 != wanted:
            os.chmod(path, wanted)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary sibling and rename the result onto ``path`` atomically (with the
    umask's permissions, whatever ``write`` did)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(path, folder=False)
    try:
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        _umask_permissions(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path, replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it takes the place of ``path``.

    An existing, non-empty ``path`` is replaced only when ``replaceable(path)`` says it may be (see
    ``publish``); the temporary folder is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    tmp = _new_sibling(path, folder=True)
    try:
        mode = tmp.stat().st_mode & 0o777
        yield tmp
        _umask_permissions(tmp, mode)
        publish(tmp, path, replaceable)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -------------------------------------------------------------------------------------------------
# Checking an output path before any work
# -------------------------------------------------------------------------------------------------

def check_writable_target(target: str | Path, what: str = "output", replaces: bool = True) -> Path:
    """The absolute ``target``, after checking that a file or folder can be created there: every name at
    most NAME_MAX bytes; the nearest existing parent is a folder this process can write in (probed by
    creating and removing a folder); with ``replaces`` (a target that is replaced whole, as an export) not
    ``/``, the home folder, the current folder or one of its parents. Raises OutputError naming the problem;
    touches nothing."""
    target = Path(os.path.abspath(os.path.expanduser(str(target))))
    resolved, cwd = resolve_path(target, what), Path.cwd().resolve()
    forbidden = {Path("/"): "the root folder", Path.home().resolve(): "your home folder", cwd: "the current folder"}
    if replaces and (resolved in forbidden or resolved in cwd.parents):
        name = forbidden.get(resolved, "a parent of the current folder")
        raise OutputError(f"{what} {target} is {name}; give a new or previously exported folder, e.g. {target / 'distilled'}")
    for part in target.parts[1:]:
        if len(os.fsencode(part)) > NAME_MAX:
            raise OutputError(f"{what}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; file "
                             f"systems allow at most {NAME_MAX}")
    existing = target.parent
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what} {target}: {existing} is a file, not a folder, so nothing can be created under it")
    try:
        remove_stale_siblings(existing / ".write-probe")  # a probe of a run killed at this very line
        _new_sibling(existing / ".write-probe", folder=True).rmdir()
    except OSError as exc:
        raise OutputError(f"{what} {target}: cannot write in {existing} ({exc.strerror or exc}); choose a folder "
                         "you can write to") from exc
    return target


def resolve_path(path: str | Path, what: str) -> Path:
    """``path`` made absolute with its symbolic links resolved; OutputError naming ``what`` for a loop of links."""
    try:
        return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()
    except (RuntimeError, OSError) as exc:   # Python < 3.13: RuntimeError("Symlink loop ..."); later OSError ELOOP
        raise OutputError(f"{what} {path}: runs into a loop of symbolic links ({exc}); give another path") from exc


def check_outside(target: str | Path, what: str, folder: str | Path, folder_what: str) -> None:
    """OutputError when the output ``target`` is ``folder`` (an input of this run, e.g. its dataset) or lies in it:
    writing there would change what this run and the next read. Touches nothing."""
    inside = resolve_path(folder, folder_what)
    resolved = resolve_path(target, what)
    if resolved == inside or inside in resolved.parents:
        raise OutputError(f"{what} {target} is inside {folder_what} {folder}: writing there would add to the data "
                          "this and later runs read; choose a folder outside it")


@contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``folder`` for the block, so that processes which read, merge
    and rewrite a file in it do so one at a time. It locks the folder itself: no lock file is left behind. Where
    there is no ``flock`` (Windows) it warns and does not lock: one process per folder is then safe, its writes
    being atomic, but processes sharing the folder may lose each other's writes."""
    try:
        import fcntl
    except ImportError:
        import warnings

        warnings.warn(f"no flock on this system: {folder} is not locked; run one process per folder", stacklevel=3)
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def save_model_folder(out: str | Path, kind: str, config: dict, state_dict: dict[str, torch.Tensor],
                      dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` ({"kind", "config"}) and ``model.safetensors`` into folder ``out``.

    ``dtype`` (e.g. float16) stores floating-point weights at that precision to halve the file; loading
    copies them into the float32 module (``load_state_dict`` casts)."""
    out = Path(out)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    save_tensors(out / MODEL_WEIGHTS, state_dict, metadata={"kind": kind})
    write_json(out / MODEL_CONFIG, {"kind": kind, "config": config})
    return out
