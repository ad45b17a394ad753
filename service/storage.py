"""What a failed write to the service's storage is called in an error: the disk is full, or it refuses."""

import errno

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def storage_error_code(exc: BaseException) -> str | None:
    """``storage_full`` (no space or quota left: retry later), ``storage_unavailable`` (the file system
    refuses: read-only, permissions, gone), or None when ``exc`` is not the file system refusing a write."""
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError | IsADirectoryError):
        return None
    return "storage_full" if exc.errno in NO_SPACE else "storage_unavailable"
