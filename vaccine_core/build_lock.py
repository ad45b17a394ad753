"""One process at a time builds a cache entry that several may need at once.

The workers of a deployment share ``VACCINE_HOME`` (docker-compose mounts one volume in each): at a first
start the worker aligning the base and another pre-screening an upload both need the default model's
converted copy, the default judge, the borderline answers it learns from and the pre-screen's intent gate
(and two jobs on one base, its harmful adapter for RESTA and its safety layers). Whoever builds an entry
holds its lock, looks again, and builds it only if it is still missing; the others wait and then find it
built, instead of training the same model side by side and writing over each other's files. The lock is
the kernel's (flock, through filelock), so a builder that dies releases it.

Callers look for the finished entry before taking the lock: a home whose entries were built beforehand may
be read-only, where no lock file can be made.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

LOCK_SUFFIX = ".lock"


@contextmanager
def building(target: Path) -> Iterator[None]:
    """Held while ``target`` is looked for again and, when still missing, built (its lock file lies beside
    it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + LOCK_SUFFIX)):
        yield
