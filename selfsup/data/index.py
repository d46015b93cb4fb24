"""Listing the image files under a folder fast enough for a million of them: one os.scandir walk, one stat a file.

The walk follows symlinked folders (a folder reached twice, by a link cycle or two links, is walked once) and
skips hidden entries (macOS "._x.png" resource forks are not images). Each file's single stat (following a
link) gives what the cache key needs (size, mtime) and whether it is a regular file at all (a FIFO named x.png
would block a reader forever). Per file there is no other system call and no path arithmetic beyond one join.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class Listing:
    """The image files under `root`, sorted by path: relative paths, sizes, mtimes (ns); `special` the
    relative paths (sorted) that are not regular files (FIFOs, devices, sockets, dangling links)."""

    root: str
    rel: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    special: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Absolute paths of the regular files."""
        return [os.path.join(self.root, r) for r in self.rel]

    def entries(self):
        """(relative path, size, mtime_ns) of each regular file: what the cache key is made of."""
        return zip(self.rel, self.sizes, self.mtimes)


def _walk(root: str, extensions: tuple[str, ...]) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative path, entry) of every non-hidden file under root whose name ends with one of `extensions`."""
    try:
        st = os.stat(root)
    except OSError:
        return
    seen = {(st.st_dev, st.st_ino)}
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            it = os.scandir(directory)
        except OSError:  # unreadable folder: skipped, as os.walk does
            continue
        with it:
            for e in it:
                name = e.name
                if name.startswith("."):
                    continue
                try:
                    is_dir = e.is_dir()  # from the directory entry's type: no system call unless it is a link
                except OSError:
                    is_dir = False
                if is_dir:
                    try:
                        ds = e.stat()
                    except OSError:
                        continue
                    if (ds.st_dev, ds.st_ino) not in seen:
                        seen.add((ds.st_dev, ds.st_ino))
                        stack.append((prefix + name + os.sep, e.path))
                elif name.lower().endswith(extensions):
                    yield prefix + name, e


def scan(root: str, extensions: tuple[str, ...] = EXTENSIONS) -> Listing:
    """Every image file under `root` (see the module doc), sorted by relative path."""
    rel, sizes, mtimes, special = [], [], [], []
    for r, e in _walk(root, extensions):
        try:
            st = e.stat()  # follows a link: its target's size, mtime and type
        except OSError:  # a dangling link
            special.append(r)
            continue
        if stat.S_ISREG(st.st_mode):
            rel.append(r)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        else:
            special.append(r)
    order = sorted(range(len(rel)), key=rel.__getitem__)
    return Listing(root, [rel[i] for i in order], [sizes[i] for i in order], [mtimes[i] for i in order],
                   sorted(special))


def has_images(root: str, extensions: tuple[str, ...] = EXTENSIONS) -> bool:
    """Whether any file under `root` is named like an image (stops at the first one)."""
    return next(_walk(root, extensions), None) is not None
