"""What a job may read: uploads, and files under the data roots an admin lists.

The server never opens a path because a user named it. A spec refers to its inputs as
- ``upload:sha256:HEX``: bytes the CLI sent with the submission (``POST /v1/uploads``),
  kept content-addressed under ``$DCSCHED_HOME/uploads/sha256/HEX``; or
- an absolute path under one of ``data_roots`` (dcsched.yaml), checked after every
  symlink is resolved, so a link cannot lead out of a root.
Anything else is refused at submit with what to do instead; nothing outside the roots is
opened, listed or even checked for existence, and no error quotes a file's contents.

Which fields of each kind are inputs: ``train``: ``data.source`` (``csv:REF``,
``npz:REF``, ``text:REF``);
``run``: ``run.working_dir`` (a folder, or a zip the CLI made of one); ``infer``:
``infer.input`` (a table). Standard library
only: the CLI imports the names it needs from here.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UPLOAD_PREFIX = "upload:sha256:"
_FILE_SCHEMES = ("csv", "npz", "text")  # dcsched.kinds.train.FILE_SCHEMES (no pydantic here)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class InputError(ValueError):
    """An input reference that may not or cannot be used; the message says what to do."""


class UploadTooLarge(InputError):
    pass


def upload_ref(hex_digest: str) -> str:
    return UPLOAD_PREFIX + hex_digest


def is_upload_ref(ref: str) -> bool:
    return ref.startswith(UPLOAD_PREFIX)


def under_roots(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots`` (likewise)."""
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
            return True
    return False


@dataclass
class InputStore:
    """Uploads under ``root`` and the data roots in force (read at each call, since the
    configuration can change while the server runs)."""

    root: Path
    data_roots: Callable[[], Sequence[str]]
    max_upload: Callable[[], int]

    def _blob(self, hex_digest: str) -> Path:
        return self.root / "sha256" / hex_digest

    def save(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store the bytes; return (reference, size). UploadTooLarge past the limit, with
        nothing kept."""
        limit = self.max_upload()
        folder = self.root / "sha256"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(
                            f"the upload is larger than the limit of {limit} bytes "
                            "(max_upload in dcsched.yaml)"
                        )
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            hex_digest = digest.hexdigest()
            os.replace(tmp_name, self._blob(hex_digest))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return upload_ref(hex_digest), size

    def resolve(self, ref: str, field: str) -> Path:
        """The file or folder ``ref`` names, if a job may read it; InputError if not."""
        if is_upload_ref(ref):
            hex_digest = ref[len(UPLOAD_PREFIX) :]
            if not _DIGEST.match(hex_digest):
                raise InputError(f"{field}: {ref!r} is not an upload reference")
            blob = self._blob(hex_digest)
            if not blob.is_file():
                raise InputError(
                    f"{field}: no upload {ref}; submit with the CLI, which uploads the files "
                    "a spec names"
                )
            return blob
        roots = list(self.data_roots())
        if not ref.startswith("/"):
            raise InputError(
                f"{field}: {ref!r} is not an upload or an absolute path; the server never "
                "opens files by a path you name: submit with the CLI, which uploads local "
                "files, or use a path under a data root"
            )
        if not roots or not under_roots(ref, roots):
            listed = ", ".join(roots) if roots else "none are listed"
            raise InputError(
                f"{field}: {ref} is not under an allowed data root ({listed}); submit with "
                "the CLI, which uploads local files, or ask an admin to list the folder in "
                "data_roots in dcsched.yaml"
            )
        real = Path(os.path.realpath(ref))
        if not real.exists():
            raise InputError(f"{field}: {ref} does not exist")
        return real


# -- the input fields of each kind ---------------------------------------------------------


def input_fields(kind: str, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, reference) of each input of a payload."""
    if kind in ("train", "tune"):
        source = str(payload.get("data", {}).get("source", ""))
        scheme, _, location = source.partition(":")
        return [("data.source", location)] if scheme in _FILE_SCHEMES and location else []
    if kind == "run":
        working_dir = payload.get("run", {}).get("working_dir")
        return [("run.working_dir", str(working_dir))] if working_dir else []
    if kind == "infer":
        table = payload.get("infer", {}).get("input")
        return [("infer.input", str(table))] if table else []
    return []


def replace_inputs(
    kind: str, payload: dict[str, Any], new: Callable[[str, str], str]
) -> dict[str, Any]:
    """A copy of ``payload`` whose inputs are ``new(field, reference)``."""
    if kind in ("train", "tune") and input_fields(kind, payload):
        data = dict(payload["data"])
        scheme, _, location = data["source"].partition(":")
        data["source"] = f"{scheme}:" + new("data.source", location)
        return {**payload, "data": data}
    if kind == "run" and input_fields(kind, payload):
        run = dict(payload["run"])
        run["working_dir"] = new("run.working_dir", str(run["working_dir"]))
        return {**payload, "run": run}
    if kind == "infer" and input_fields(kind, payload):
        infer = dict(payload["infer"])
        infer["input"] = new("infer.input", str(infer["input"]))
        return {**payload, "infer": infer}
    return payload


def resolve_payload(kind: str, payload: dict[str, Any], inputs: InputStore) -> dict[str, Any]:
    """The payload with each input replaced by the path a job reads (InputError if any
    may not be read)."""
    return replace_inputs(kind, payload, lambda field, ref: str(inputs.resolve(ref, field)))
