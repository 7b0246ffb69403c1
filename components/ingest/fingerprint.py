"""A fingerprint of ingest's inputs, so a recurring run sees new data in the same bucket.

KFP's cache key of a task is made of its input parameter values, its input artifacts' names, its
outputs' specs and its container (backend ``cacheutils.GenerateCacheKey``); it never looks at the
files behind a URI. The pipeline therefore lists the input trees in a small uncached task
(``fingerprint_data``) and passes the digest of that listing to ``ingest`` as a parameter:
unchanged data gives the same string, so ``ingest`` and every step after it are cache hits; one
added, removed, resized or rewritten file changes it, so ``ingest`` runs again and its new
``cases`` artifact changes the cache keys of the steps downstream.

An object is described by its path relative to the root, its size and its version: the GCS
``generation`` (a new one on every write) or, locally, the modification time in nanoseconds.
Contents are not read (listing a bucket of ~10^5 DICOM files is one paginated request stream).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from mammo.components import storage


@dataclass(frozen=True)
class ObjectStamp:
    """What identifies one version of one input file."""

    rel: str
    size: int
    version: str


def stamps(root: str | os.PathLike) -> list[ObjectStamp]:
    """Every file under ``root`` with its size and version, sorted by relative path."""
    return [ObjectStamp(e.rel, e.size, e.version) for e in storage.list_files(root)]


def fingerprint(*roots: str | os.PathLike) -> str:
    """``sha256:<hex>`` over the stamps of every file under each root (roots in the given order).

    The roots themselves are not hashed (they are ingest's own parameters already), so the same
    data mounted at another path has the same fingerprint. An empty or missing root hashes as
    empty: ingest reports it with its own clear error.
    """
    digest = hashlib.sha256()
    files = 0
    for i, root in enumerate(roots):
        digest.update(f"root {i}\n".encode())
        for s in stamps(root):
            digest.update(f"{s.rel}\t{s.size}\t{s.version}\n".encode())
            files += 1
    return f"sha256:{digest.hexdigest()}:{files}"
