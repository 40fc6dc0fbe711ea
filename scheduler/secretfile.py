"""Secret files (the API's bootstrap token, the local Ray head's token): created
atomically and private, refused when damaged.

A secret is written to a temporary file in the same folder (mode 0600), fsynced, and
linked into place with ``os.link``, which, unlike ``os.replace``, never overwrites a
secret that another process created meanwhile: whoever links first wins and everyone
reads that one. The folder is fsynced too, so a crash leaves either no file or the whole
secret, never an empty or partial one. Reading refuses a file that is empty, shorter
than a full secret or not plain ASCII, since an empty secret would mean no
authentication at all.

Standard library only: the CLI imports this.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class SecretFileError(RuntimeError):
    """A secret file that cannot be used, in words that say how to fix it."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_secret(path: Path, value: str) -> bool:
    """Write ``value`` to ``path`` (mode 0600) unless the file exists; True if written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_secret(path: Path, length: int, fix: str) -> str:
    """The secret in ``path``, which must hold at least ``length`` ASCII characters.

    ``fix`` says how to repair a damaged file; it ends every error message. The secret
    itself never appears in a message.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not a token (not plain ASCII); {fix}") from None
    if not value:
        raise SecretFileError(f"{path} is empty, which would disable authentication; {fix}")
    if len(value) < length or any(c.isspace() for c in value):
        raise SecretFileError(
            f"{path} holds {len(value)} characters, not a full token (at least {length}); {fix}"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)  # readable by others: make it private again
    return value


def ensure_secret(path: Path, make: str, length: int, fix: str) -> str:
    """Create ``path`` holding ``make`` if it is missing; return the secret it holds."""
    create_secret(path, make)
    return read_secret(path, length, fix)
