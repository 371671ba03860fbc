"""Atomic publishing of a release to a local directory or any fsspec URL.

Layout: ``<target>/<dataset>/<release_id>/part-*.parquet`` and ``manifest.json``. Readers trust the
manifest only: it lists every file with its size and SHA-256, and it is written last.

Atomicity:
  * local filesystem: the files and the manifest are written to a hidden staging directory beside the
    final one and moved into place with one ``rename``, which is atomic on POSIX. A staging directory is
    named after its owner process (``.staging-<host>.<pid>.<start>-<random>-<release_id>``); a crash
    leaves at most one, which the next publish into the same place removes once that process is gone
    (a concurrent publisher's staging directory is never touched).
  * object stores (s3://, gs://, memory://...): the data files are uploaded first (each a whole object,
    under a name unique to this attempt), the manifest last; for S3 the manifest PUT is conditional
    (``If-None-Match: *``) so of two publishers racing on one release id exactly one wins, and the loser
    removes its own parts.
Publishing a release id that already has a manifest is refused; publishing an identical manifest again is
a no-op (idempotent re-runs of a scheduled job).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from safesynth.errors import PublishError
from safesynth.output import sha256_file
from safesynth.owner import Owner

__all__ = ["PublishedRelease", "build_manifest_files", "find_published", "publish_release", "sweep_staging"]

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedRelease:
    location: str
    manifest: str
    files: tuple[str, ...]
    already_published: bool = False


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _is_local(target: str) -> bool:
    return "://" not in target or target.startswith("file://")


def _local_path(target: str) -> Path:
    return Path(target.removeprefix("file://"))


def build_manifest_files(paths: list[Path]) -> list[dict[str, Any]]:
    return [{"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(paths)]


def find_published(target: str, dataset: str, release_id: str,
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of an already published release, or None. Raises PublishError if unreadable."""
    url = _join(target, dataset, release_id, MANIFEST)
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            manifest = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read {url}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PublishError(f"cannot read {url}: the manifest must be a JSON object")
    return manifest


def publish_release(
    files: list[Path],
    manifest: dict[str, Any],
    *,
    target: str,
    dataset: str,
    release_id: str,
    storage_options: dict[str, Any] | None = None,
) -> PublishedRelease:
    """Publish ``files`` and ``manifest`` under ``<target>/<dataset>/<release_id>/``, manifest last."""
    existing = find_published(target, dataset, release_id, storage_options)
    final = _join(target, dataset, release_id)
    if existing is not None:
        if _same_release(existing, manifest):
            return PublishedRelease(location=final, manifest=_join(final, MANIFEST),
                                    files=tuple(f["path"] for f in manifest["files"]), already_published=True)
        raise PublishError(f"release `{release_id}` is already published at {final}; "
                           "choose a new --release-id (published releases are immutable)")
    if _is_local(target):
        _publish_local(files, _dumps(manifest), _local_path(target) / dataset, release_id)
    else:
        _publish_remote(files, manifest, final, storage_options or {})
    return PublishedRelease(location=final, manifest=_join(final, MANIFEST), files=tuple(p.name for p in files))


_STAGING = re.compile(r"^\.staging-(?P<owner>[^.]+\.\d+\.\d+)-[0-9a-f]{8}-")


def sweep_staging(parent: Path) -> int:
    """Remove staging directories under ``parent`` whose publishing process died; returns the count."""
    removed = 0
    for old in parent.glob(".staging-*") if parent.is_dir() else ():
        match = _STAGING.match(old.name)
        owner = Owner.from_file_token(match["owner"]) if match else None
        if owner is not None and owner.state() == "dead":
            shutil.rmtree(old, ignore_errors=True)
            removed += 1
    return removed


def _publish_local(files: list[Path], body: bytes, parent: Path, release_id: str) -> None:
    final = parent / release_id
    staging = parent / f".staging-{Owner.current().file_token()}-{uuid.uuid4().hex[:8]}-{release_id}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(parent)
        staging.mkdir()
        for path in files:
            shutil.copyfile(path, staging / path.name)
        (staging / MANIFEST).write_bytes(body)
        for entry in staging.iterdir():
            with entry.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists() and not any(final.iterdir()):
            final.rmdir()
        os.rename(staging, final)  # atomic; fails if `final` appeared meanwhile
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PublishError(f"cannot publish to {final}: {exc.strerror or exc}") from exc


def _publish_remote(files: list[Path], manifest: dict[str, Any], final: str,
                    storage_options: dict[str, Any]) -> None:
    """Upload parts under attempt-unique keys, then the manifest that names them (conditional on S3).

    Two publishers racing on one release id never overwrite each other's parts; the loser of the
    manifest PUT deletes its own parts.
    """
    fs, root = fsspec.core.url_to_fs(final, **storage_options)
    attempt = uuid.uuid4().hex[:12]
    renamed = {p.name: f"{p.stem}-{attempt}{p.suffix}" for p in files}
    body = _dumps({**manifest, "files": [{**f, "path": renamed.get(f["path"], f["path"])}
                                         for f in manifest.get("files", [])]})
    uploaded: list[str] = []
    try:
        for path in files:
            dest = f"{root}/{renamed[path.name]}"
            fs.put_file(str(path), dest)
            uploaded.append(dest)
        _put_manifest(fs, f"{root}/{MANIFEST}", body)
    except Exception as exc:
        for dest in uploaded:
            try:
                fs.rm_file(dest)
            except Exception:  # noqa: BLE001, S110 - best-effort cleanup; our manifest was never written
                pass
        if isinstance(exc, PublishError):
            raise
        raise PublishError(f"cannot publish to {final}: {exc.__class__.__name__}: {exc}") from exc


def _dumps(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _same_release(existing: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Equal up to the attempt suffix that remote publishing adds to part names."""
    def norm(m: dict[str, Any]) -> dict[str, Any]:
        files = [{**f, "path": re.sub(r"-[0-9a-f]{12}(\.[^.]+)$", r"\1", f.get("path", ""))}
                 for f in m.get("files", [])]
        return {**m, "files": files}
    return norm(existing) == norm(manifest)


def _put_manifest(fs: Any, path: str, body: bytes) -> None:
    """Write the manifest; on S3 only if no manifest exists yet (conditional PUT)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        bucket, key = path.split("/", 1)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                raise PublishError(f"another publisher won the race for {path}; this release was not published") from exc
            raise
        fs.invalidate_cache(path)
        return
    if fs.exists(path):
        raise PublishError(f"{path} appeared while publishing; this release was not published")
    with fs.open(path, "wb") as fh:
        fh.write(body)
