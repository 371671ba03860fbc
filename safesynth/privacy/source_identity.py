"""Which data a release reads, independently of the name the spec gives it: the ledger's source key.

The lifetime budget is kept per ``dataset``, a name the spec chooses; renaming it must not reset the
budget. So the ledger also binds each dataset to a *source key*, a normalised identity of the spec's
``source``, and refuses a reservation whose source is already budgeted under another name (see
:meth:`safesynth.privacy.ledger.Ledger.reserve`).

* Local files (a path, or a ``file://`` URL): ``file://`` + ``os.path.realpath`` (symlinks and ``..``
  resolved). The device and inode are kept next to it (``source_inode``) so that a hard link or a bind
  mount of a budgeted file under another path is recognised too. The inode is not part of the key: a
  source refreshed by writing a new file and renaming it over the old one (a new inode at the same path)
  stays the same source.
* URLs: lower-cased scheme and host, the port if given, and the path; credentials, query string and
  fragment are dropped (they say how to reach the data, not which data). fsspec storage options (an
  ``endpoint_url`` say) are ignored: two stores serving the same bucket and key conflict rather than
  splitting one budget in two.

This is a guard against resetting a budget by renaming, not a proof of data identity: a copy of the
data at another location is another source. Nothing here reads the source's contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["SourceIdentity", "alias_is_live", "source_identity"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceIdentity:
    """A source's key (bound to one dataset) and, for a local file that exists, its ``dev:inode``."""

    key: str
    inode: str | None = None


def source_identity(location: str) -> SourceIdentity:
    """The identity of the source at ``location`` (a resolved spec source: absolute path or URL).

    Reads metadata only (``os.stat`` for a local file); a missing file gets a key without an inode.
    """
    if "://" not in location:
        return _local(location)
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("file", "local"):
        return _local(unquote(parts.path))
    host = (parts.hostname or "").lower()  # hostname drops user:password@ and lower-cases
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return SourceIdentity(key=urlunsplit((scheme, netloc, parts.path, "", "")))


def _local(path: str) -> SourceIdentity:
    real = os.path.realpath(os.path.expanduser(path))
    try:
        st = os.stat(real)
    except OSError:
        return SourceIdentity(key=f"file://{real}")
    return SourceIdentity(key=f"file://{real}", inode=f"{st.st_dev}:{st.st_ino}")


def alias_is_live(key: str, inode: str) -> bool:
    """Whether the local file recorded as ``key`` still is ``inode`` here (so ``inode`` means that file).

    Inode numbers are reused once a file is deleted; a recorded inode whose path now holds another file
    (or nothing, or is not a local path) is stale and names nothing.
    """
    if not key.startswith("file://"):
        return False
    found = source_identity(key.removeprefix("file://"))
    return found.inode == inode
