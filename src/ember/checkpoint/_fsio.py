"""Low-level file system helpers: hashed + fsynced writes, safe member names, directory swaps.

Everything here is synchronous and rank-agnostic. Tests monkeypatch :func:`_write_all` (the single place
bytes reach the disk), :func:`remove_tree` and :func:`rename_exchange` to simulate full disks and crashes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeVar

from ._errors import AbandonedCheckpointError, CheckpointError

DIGEST_DIR = ".ember-digests"
"""Hidden folder inside a temporary checkpoint dir where writers leave the digests of what they wrote."""
MANIFEST = "manifest.json"

_CHUNK = 16 << 20  # bytes per write() call and per hash update
# Chunks at least this large are hashed on a helper thread while the next one is written.
_ASYNC_HASH_MIN = 1 << 20
_MAX_PENDING = 4
_READ_CHUNK = 8 << 20

Data = bytes | bytearray | memoryview
T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------------------------------- names


def member_path(base: Path, filename: str) -> Path:
    """``base / filename`` for a relative posix ``filename`` that cannot escape ``base``."""
    parts = filename.split("/") if isinstance(filename, str) else []
    if (
        not parts
        or PurePosixPath(filename).is_absolute()
        or "\\" in filename
        or "\x00" in filename
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise CheckpointError(
            f"invalid file name {filename!r} for checkpoint directory {base}: use a relative posix path "
            "such as 'model.safetensors' or 'model/shard-0.safetensors' (no '..', no leading '/')."
        )
    if parts[0] == DIGEST_DIR:
        raise CheckpointError(f"file name {filename!r} in {base} is reserved for ember's own bookkeeping.")
    return base.joinpath(*parts)


def writable_member(tmp_dir: Path, filename: str) -> Path:
    """Like :func:`member_path`, refusing ``manifest.json`` (written by ``commit``) and missing dirs."""
    path = member_path(tmp_dir, filename)
    if filename == MANIFEST:
        raise CheckpointError(
            f"{path}: manifest.json is written by commit(); pass what you want recorded as commit(meta=...)."
        )
    if not tmp_dir.is_dir():
        raise AbandonedCheckpointError(
            f"temporary checkpoint directory {tmp_dir} does not exist: call begin(final_dir) on rank 0 "
            "(then a barrier) and write into the directory it returns."
        )
    return path


# --------------------------------------------------------------------------------------------- writes


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (the only place checkpoint bytes reach the disk)."""
    while len(data):
        written = os.write(fd, data)
        data = data[written:]


class _HashingSink:
    """Writes chunks to a new file while a helper thread hashes them, then fsyncs."""

    def __init__(self, path: Path) -> None:
        flags = (
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        )
        self._fd = os.open(path, flags, 0o644)
        self._hash = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self.size = 0

    def write(self, data: Data) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            self._hash_chunk(chunk)
            _write_all(self._fd, chunk)
            self.size += len(chunk)

    def _hash_chunk(self, chunk: memoryview) -> None:
        if len(chunk) < _ASYNC_HASH_MIN:
            self._drain()
            self._hash.update(chunk)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="ember-sha256")
        while len(self._pending) >= _MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._hash.update, chunk))

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def finish(self) -> str:
        """Fsync, close and return the sha256 hex digest of everything written."""
        try:
            self._drain()
            os.fsync(self._fd)
        finally:
            self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def disk_error(path: Path, exc: OSError, tmp_dir: Path | None = None) -> CheckpointError:
    """The CheckpointError for an OSError while writing ``path`` (inside ``tmp_dir``)."""
    if tmp_dir is not None and not tmp_dir.is_dir():
        return AbandonedCheckpointError(
            f"could not write {path}: the temporary checkpoint directory {tmp_dir} is gone (another rank's "
            "write failed and abandoned it, or begin() ran again). See the first error; the previous "
            "checkpoint is untouched."
        )
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    why = (
        "the disk is full or over quota" if full else "is the disk full or read-only, or permission missing?"
    )
    abandoned = (
        f" The unfinished {tmp_dir} was removed to give its space back." if tmp_dir is not None else ""
    )
    return CheckpointError(
        f"could not write {path}: {exc.strerror or exc} - {why}. Nothing was committed and the previous "
        f"checkpoint is untouched.{abandoned} Free some space (or lower keep_last) and save again."
    )


def _make_parents(tmp_dir: Path, path: Path) -> None:
    """Create the folders between ``tmp_dir`` and ``path`` (never ``tmp_dir`` itself, if it vanished)."""
    folder = tmp_dir
    for part in path.relative_to(tmp_dir).parts[:-1]:
        folder = folder / part
        try:
            folder.mkdir()
        except FileExistsError:
            pass


def write_member(tmp_dir: Path, filename: str, chunks: Iterable[Data], *, manifest: bool = False) -> None:
    """Write ``chunks`` to ``tmp_dir/filename``, fsync it and record its size and sha256 for ``commit``.

    ``manifest=True`` is commit's own write of ``manifest.json`` (no digest recorded). On an OSError (a
    full disk) the checkpoint is abandoned: the whole ``tmp_dir`` is removed to give the space back and
    a :class:`CheckpointError` is raised. On other errors only the partial file is removed.
    """
    path = tmp_dir / MANIFEST if manifest else writable_member(tmp_dir, filename)
    sink: _HashingSink | None = None
    try:
        _make_parents(tmp_dir, path)
        sink = _HashingSink(path)
        for chunk in chunks:
            sink.write(chunk)
        digest = sink.finish()
        if not manifest:
            _record_digest(tmp_dir, filename, sink.size, digest)
    except BaseException as exc:
        if sink is not None:
            try:
                sink.close()
            except OSError:
                pass
        remove_tree(path)
        if isinstance(exc, OSError):
            error = disk_error(path, exc, tmp_dir)
            remove_tree(tmp_dir)
            raise error from exc
        raise


def _digest_file(tmp_dir: Path, filename: str) -> Path:
    return tmp_dir / DIGEST_DIR / (hashlib.sha256(filename.encode()).hexdigest()[:40] + ".json")


def _record_digest(tmp_dir: Path, filename: str, size: int, sha256: str) -> None:
    side = _digest_file(tmp_dir, filename)
    try:
        side.parent.mkdir()
    except FileExistsError:
        pass
    payload = json.dumps({"name": filename, "size": size, "sha256": sha256}).encode()
    side.write_bytes(payload)


def recorded_digests(tmp_dir: Path) -> dict[str, tuple[int, str]]:
    """``{relative name: (size, sha256)}`` left by :func:`write_member` calls of any rank."""
    found: dict[str, tuple[int, str]] = {}
    folder = tmp_dir / DIGEST_DIR
    if not folder.is_dir():
        return found
    for side in folder.iterdir():
        try:
            rec = json.loads(side.read_bytes())
            found[str(rec["name"])] = (int(rec["size"]), str(rec["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable record: commit hashes that file itself
    return found


def write_small_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text``: temp file, fsync, os.replace, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _write_all(fd, memoryview(text.encode()))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_tree(tmp)
        raise
    fsync_dir(path.parent)


# ------------------------------------------------------------------------------------ reads and hashes


def hash_file(path: Path, *, fsync: bool = False) -> tuple[int, str]:
    """``(size, sha256 hex)`` of ``path`` read in large chunks; optionally fsync it on the way."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
        if fsync:
            os.fsync(f.fileno())
    return size, digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        if sys.platform == "win32":
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads (sha256 and file I/O release the GIL)."""
    workers = min(8, os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="ember-ckpt") as pool:
        return list(pool.map(fn, items))


# ------------------------------------------------------------------------------------- dirs and moves


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists; errors are ignored (used for cleanup)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform or file system cannot do it; the caller then moves ``b`` aside.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange_flag = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange_flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
