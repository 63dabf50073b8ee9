"""Writing a file that holds a secret: private from its first byte, never through a symlink,
never half-written. Every secret Tessera writes goes through here (bootstrap bundles, the KEK,
the agent's state and key files, the lab's keys).

How this works: `write_secret(path, data)` writes a new temporary file beside `path`
(``O_CREAT | O_EXCL | O_NOFOLLOW``, created 0600, then `fchmod`/`fchown` on the descriptor, so
neither the umask nor a default ACL decides the mode), fsyncs it and renames it over `path`,
then fsyncs the directory. Hence:

- the secret lands in a new inode with the new mode: a file that was 0644 before -- and anyone
  who opened it while it was readable, or a hard link to it elsewhere -- never sees the new
  bytes (rewriting the old inode in place with ``O_TRUNC`` + ``fchmod`` would leak to both);
- a symlink at `path` is refused with `SecretFileError` (``ELOOP``) and its target is left
  alone, dangling or not; one that appears after the check is replaced by the rename, never
  followed;
- a crash leaves the old file or the new one, whole; the temporary file is removed on failure.

``exclusive=True`` refuses a `path` that exists in any form (the KEK is never overwritten): the
finished temporary file is hard-linked into place, which fails atomically if the name is taken.
`write_atomic` is the same for files whose mode the caller chooses (a certificate may be 0644;
a key a service reads under its group 0640).
"""

from __future__ import annotations

import errno
import os
import stat

SECRET_MODE = 0o600


class SecretFileError(OSError):
    """A secret file could not be written as asked (a symlink in the way, a name taken)."""


def write_secret(path: str | os.PathLike, data: bytes, *, group: str | None = None,
                 exclusive: bool = False) -> str:
    """Write `data` to `path`, mode 0600 (0640 with `group`: the owner writes, the group reads).
    Returns the path."""
    return write_atomic(path, data, 0o640 if group else SECRET_MODE, group=group, exclusive=exclusive)


def write_atomic(path: str | os.PathLike, data: bytes, mode: int, *, group: str | None = None,
                 exclusive: bool = False) -> str:
    """Write `data` to `path` with exactly `mode` (and `group`), atomically, never through a
    symlink (see the module docstring). Returns the path."""
    if isinstance(data, str):
        raise TypeError("write bytes: encode text first")
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    _refuse_symlink(path)
    gid = _group_id(group) if group is not None else -1
    tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, SECRET_MODE)
    try:
        try:
            if gid != -1:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise SecretFileError(errno.EEXIST, "exists; refusing to overwrite it", path) from None
            os.unlink(tmp)
        else:
            _refuse_symlink(path)
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _refuse_symlink(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SecretFileError(errno.ELOOP, "is a symbolic link; refusing to write a secret through it", path)
    if stat.S_ISDIR(st.st_mode):
        raise SecretFileError(errno.EISDIR, "is a directory", path)


def _group_id(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SecretFileError(errno.EINVAL, f"no group {group!r}") from None


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
