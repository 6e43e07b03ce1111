"""Result sets on disk: the plain list, the CSV and the nydus JSON of one result (and any file added later),
replaced together in one step, by one writer at a time, never through a symlink.

Upstream's names stay where upstream puts them, as symbolic links that never change; what they resolve through is
the one thing a write changes. For result ``R`` in directory ``D`` (``<persist_dir>/<repository path>``):

    D/R        -> .R/current/list           the plain list          upstream's names: readers need nothing new
    D/R.csv    -> .R/current/list.csv       path,size,elapsed
    D/R.json   -> .R/current/list.json      nydus's prefetch file
    D/.R/                                   the result's own directory (no name upstream writes begins with ".")
        current -> set.<id>                 switched by one rename()
        set.<id>/list, list.csv, list.json  one complete set, never changed once written
                 runs/...                   what on_repeat = "merge" keeps (results.runs)

Why: three files replaced one by one can be seen, and after a crash left, from two different writes (the list of
one trace beside the CSV of another). A write here builds a complete new set directory, then switches ``current``;
every name resolves through it, so at any moment a reader finds the old set or the new one, whole, and a crash at
any point leaves the previous set (kubelet writes ConfigMap volumes the same way). Writers of one result hold an
exclusive ``flock`` on ``D/.R`` — threads and processes alike: the daemon, ``profile``, ``merge`` — from reading the
current set to switching to theirs, so that "is there a result?" and "write mine" are one step. Readers take no
lock: they resolve ``current`` once and read that set's files (again, if a writer removed that set meanwhile).

A result written by upstream or an earlier version (regular files at ``D/R``...) is read as it is. The first write
adopts it first: hard links to its files in a set, ``current`` to that set, then each name becomes a link to the very
same file; so that step, too, is never seen half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from nri_optimizer.errors import PersistError, ResultError

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755
LIST = "list"  # the plain list's name in a set; every other published file is LIST + a suffix
SUFFIXES = ("", ".csv", ".json")  # the files upstream writes: what a result not in a set can have
CURRENT = "current"
_SET = re.compile(r"set\.[0-9a-f]{12}\Z")
# A lockless reader whose set was replaced while it read starts again; each retry means a whole write happened
# meanwhile, so running out of them takes a writer in a tight loop.
_READ_ATTEMPTS = 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(persist_dir: str, components: Iterable[str]) -> int:
    """Open persist_dir/components..., creating what is missing, refusing any symlink on the way down
    (persist_dir itself is the administrator's choice, and may be one)."""
    os.makedirs(persist_dir, DIR_MODE, exist_ok=True)
    fd = os.open(persist_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in components:
            _check_name(name)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise PersistError(f"{name}: not a directory we can use ({exc.strerror})") from exc
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists(path: str, dir_fd: int | None = None) -> bool:
    """Whether a name is there (as a link, even one that resolves to nothing yet)."""
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise PersistError(f"refusing path component {name!r}")


def _open_below(dir_fd: int, path: str) -> int:
    """Open a file at a relative path ("set.x/runs/1") below dir_fd, following no symlink on the way."""
    *directories, name = path.split("/")
    opened: list[int] = []
    try:
        for directory in directories:
            opened.append(os.open(directory, _DIR_FLAGS, dir_fd=opened[-1] if opened else dir_fd))
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=opened[-1] if opened else dir_fd)
    finally:
        for fd in opened:
            os.close(fd)


def _read_fd(fd: int, limit: int | None) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """A new file in a set being built (nobody reads it yet), on disk before the set is switched to."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultSet:
    """One result, held for writing: ``with ResultSet(persist_dir, directory, name) as result: ...``.

    Entering takes the result's lock (waiting for another writer to finish); leaving releases it.
    """

    def __init__(self, persist_dir: str, directory: str, name: str) -> None:
        _check_name(name)
        self._persist_dir = persist_dir
        self._components = [c for c in directory.split("/") if c]
        self.name = name
        self.path = os.path.join(persist_dir, *self._components, name)  # the plain list, as upstream names it
        self._own = "." + name
        self._dir_fd = -1
        self._own_fd = -1

    def __enter__(self) -> ResultSet:
        try:
            self._dir_fd = _open_dir(self._persist_dir, self._components)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._own, DIR_MODE, dir_fd=self._dir_fd)
            self._own_fd = os.open(self._own, _DIR_FLAGS, dir_fd=self._dir_fd)
            fcntl.flock(self._own_fd, fcntl.LOCK_EX)
        except BaseException as exc:
            self._close()
            if isinstance(exc, OSError):
                raise PersistError(f"{self._where(self._own)}: {exc.strerror or exc}") from exc
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._close()

    def _close(self) -> None:
        for fd in (self._own_fd, self._dir_fd):  # closing .R's fd releases the lock
            if fd >= 0:
                os.close(fd)
        self._own_fd = self._dir_fd = -1

    def _where(self, name: str) -> str:
        return os.path.join(os.path.dirname(self.path), name)

    # -- reading, under the lock ------------------------------------------------------------------------

    def read(self, name: str) -> bytes | None:
        """A file of the current set ("list", "list.csv", "runs/3"), or None when it has none."""
        current = self._current()
        try:
            if current is None:
                fd = self._open_unadopted(name)
                return None if fd is None else _read_fd(fd, None)
            return _read_fd(_open_below(self._own_fd, f"{current}/{name}"), None)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistError(f"{self._where(self._own)}/{current}/{name}: {exc.strerror or exc}") from exc

    def listing(self, directory: str) -> list[str]:
        """The names in a directory of the current set ([] when it has none)."""
        current = self._current()
        if current is None:
            return []
        try:
            fd = os.open(f"{current}/{directory}", _DIR_FLAGS, dir_fd=self._own_fd)
        except FileNotFoundError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _current(self) -> str | None:
        """The current set; None when there is none, or when upstream's name for the list is gone: deleting the
        list is how a user forgets a result, whatever is left beside it (the next write clears that)."""
        if not _exists(self.name, self._dir_fd):
            return None
        try:
            target = os.readlink(CURRENT, dir_fd=self._own_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistError(f"{self._where(self._own)}/{CURRENT}: {exc.strerror or exc}") from exc
        if not _SET.match(target):
            raise PersistError(f"{self._where(self._own)}/{CURRENT}: points to {target[:100]!r}, which is not a set")
        return target

    def _open_unadopted(self, name: str) -> int | None:
        """A file of a result that is not in a set yet (upstream's, or an earlier version's): a regular file."""
        suffix = name[len(LIST) :] if name.startswith(LIST) else None
        if suffix not in SUFFIXES:
            return None
        try:
            fd = os.open(self.name + suffix, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except OSError:
            return None  # absent, or a link of ours whose set was never switched to
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def _unadopted(self, name: str) -> bool:
        fd = self._open_unadopted(name)
        if fd is None:
            return False
        os.close(fd)
        return True

    # -- writing ----------------------------------------------------------------------------------------

    def commit(self, files: Mapping[str, bytes], carry: Sequence[str] = ()) -> None:
        """Make the result, in one step, a new set of ``files`` (name -> content; "runs/4" makes the directory)
        and ``carry``: names of the current set's files that the new one keeps (hard links: never rewritten)."""
        try:
            previous = self._current()
            if previous is None and self._unadopted(LIST):
                previous = self._adopt()
            new = self._build(files, carry, previous)
            try:
                self._link_names([name for name in (*files, *carry) if "/" not in name and name.startswith(LIST)])
                self._switch(new)
            except BaseException:
                shutil.rmtree(new, dir_fd=self._own_fd, ignore_errors=True)
                raise
        except OSError as exc:
            name = exc.filename if isinstance(exc.filename, str) else self._own
            raise PersistError(f"{self._where(name)}: {exc.strerror or exc}") from exc
        self._collect(new)

    def _build(self, files: Mapping[str, bytes], carry: Sequence[str], previous: str | None) -> str:
        new = f"set.{os.urandom(6).hex()}"
        os.mkdir(new, DIR_MODE, dir_fd=self._own_fd)
        try:
            set_fd = os.open(new, _DIR_FLAGS, dir_fd=self._own_fd)
            subdirs: dict[str, int] = {}
            try:
                for name in (*files, *carry):
                    directory, _, base = name.rpartition("/")
                    if directory and directory not in subdirs:
                        _check_name(directory)
                        os.mkdir(directory, DIR_MODE, dir_fd=set_fd)
                        subdirs[directory] = os.open(directory, _DIR_FLAGS, dir_fd=set_fd)
                    _check_name(base)
                    target_fd = subdirs[directory] if directory else set_fd
                    if name in files:
                        _write_new(target_fd, base, files[name])
                    else:
                        if previous is None:
                            raise PersistError(f"{self._where(self._own)}: no current set to keep {name} from")
                        os.link(
                            f"{previous}/{name}",
                            base,
                            src_dir_fd=self._own_fd,
                            dst_dir_fd=target_fd,
                            follow_symlinks=False,
                        )
                for fd in subdirs.values():
                    os.fsync(fd)
                os.fsync(set_fd)
            finally:
                for fd in (*subdirs.values(), set_fd):
                    os.close(fd)
        except BaseException:
            shutil.rmtree(new, dir_fd=self._own_fd, ignore_errors=True)
            raise
        return new

    def _link_names(self, names: Iterable[str]) -> None:
        """Make upstream's names (R, R.csv, ...) the links through ``current`` to the set's files, where they are
        not yet: a link is made beside ``current`` and renamed over whatever holds the name (never followed)."""
        changed = False
        for name in names:
            public = self.name + name[len(LIST) :]
            target = f"{self._own}/{CURRENT}/{name}"
            with contextlib.suppress(OSError):
                if os.readlink(public, dir_fd=self._dir_fd) == target:
                    continue
            temp = f"link.{os.urandom(6).hex()}.tmp"
            os.symlink(target, temp, dir_fd=self._own_fd)
            try:
                os.rename(temp, public, src_dir_fd=self._own_fd, dst_dir_fd=self._dir_fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=self._own_fd)
                exc.filename = public
                raise
            changed = True
        if changed:
            os.fsync(self._dir_fd)

    def _switch(self, new: str) -> None:
        temp = f"{CURRENT}.{os.urandom(6).hex()}.tmp"
        os.symlink(new, temp, dir_fd=self._own_fd)
        try:
            os.rename(temp, CURRENT, src_dir_fd=self._own_fd, dst_dir_fd=self._own_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self._own_fd)
            raise
        os.fsync(self._own_fd)

    def _adopt(self) -> str:
        """Move a result that is not in a set (regular files at upstream's names) into one, unchanged."""
        present = [suffix for suffix in SUFFIXES if self._unadopted(LIST + suffix)]
        adopted = f"set.{os.urandom(6).hex()}"
        os.mkdir(adopted, DIR_MODE, dir_fd=self._own_fd)
        set_fd = os.open(adopted, _DIR_FLAGS, dir_fd=self._own_fd)
        try:
            for suffix in present:
                os.link(
                    self.name + suffix, LIST + suffix, src_dir_fd=self._dir_fd, dst_dir_fd=set_fd, follow_symlinks=False
                )
            os.fsync(set_fd)
        finally:
            os.close(set_fd)
        # current first: each name then becomes a link that resolves to the very file it was.
        self._switch(adopted)
        self._link_names([LIST + suffix for suffix in present])
        return adopted

    def _collect(self, current: str) -> None:
        """Remove earlier sets and what writers that crashed left; nothing else (the lock keeps other writers out)."""
        try:
            names = os.listdir(self._own_fd)
        except OSError:
            return
        for name in names:
            try:
                if _SET.match(name) and name != current:
                    shutil.rmtree(name, dir_fd=self._own_fd)
                elif name.endswith(".tmp"):
                    os.unlink(name, dir_fd=self._own_fd)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self._where(f"{self._own}/{name}"), exc.strerror or exc)


def read_result(list_path: str, suffixes: Sequence[str] = SUFFIXES, *, limit: int | None = None) -> dict[str, bytes]:
    """The files of the result whose plain list is ``list_path``, all of one set: {suffix: content} for those it has
    (at most ``limit`` bytes of each). A list that is not in a set (upstream's, a copy) is read as the files beside it.
    Raises OSError when one cannot be read."""
    directory, name = os.path.split(list_path)
    for _ in range(_READ_ATTEMPTS):
        files = _read_set_once(directory or ".", name, suffixes, limit)
        if files is not None:
            return files
    raise ResultError(f"{list_path}: replaced {_READ_ATTEMPTS} times while being read")


def _read_set_once(directory: str, name: str, suffixes: Sequence[str], limit: int | None) -> dict[str, bytes] | None:
    """None when the set read was replaced meanwhile."""
    if not _exists(os.path.join(directory, name)):
        return {}  # no list: no result (ResultSet._current)
    try:
        own_fd = os.open(os.path.join(directory, "." + name), _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return _read_unadopted(directory, name, suffixes, limit)
    try:
        try:
            current = os.readlink(CURRENT, dir_fd=own_fd)
        except FileNotFoundError:
            return _read_unadopted(directory, name, suffixes, limit)
        if not _SET.match(current):
            raise ResultError(f"{directory}/.{name}/{CURRENT}: points to {current[:100]!r}, which is not a set")
        files = {}
        for suffix in suffixes:
            with contextlib.suppress(FileNotFoundError):
                files[suffix] = _read_fd(_open_below(own_fd, f"{current}/{LIST}{suffix}"), limit)
        # Sets are never reused and only a set that is no longer current is removed: if current is still the
        # one read, nothing read was removed, and what is missing is missing from the set.
        return files if os.readlink(CURRENT, dir_fd=own_fd) == current else None
    finally:
        os.close(own_fd)


def _read_unadopted(directory: str, name: str, suffixes: Sequence[str], limit: int | None) -> dict[str, bytes]:
    files = {}
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            files[suffix] = _read_fd(os.open(os.path.join(directory, name + suffix), os.O_RDONLY | os.O_CLOEXEC), limit)
    return files
