"""Checks on the file system that the commands make before long work (a build, a compile, a calibration)."""

from __future__ import annotations

import errno
import os
import tempfile


def check_writable(path: str) -> None:
    """Raises the OSError that writing under directory ``path`` would meet, changing nothing on disk: a
    temporary file is made and removed in ``path``, or in the nearest directory above it that exists
    (``NotADirectoryError`` when that is a file).
    """
    where = os.path.abspath(path)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    fd, probe = tempfile.mkstemp(dir=where, prefix=".jaxcnn-write-check-")
    os.close(fd)
    os.remove(probe)
