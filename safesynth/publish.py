"""The ``files`` publisher: atomic publishing of a release to a local directory or any fsspec URL.

Layout: ``<target>/<dataset>/<release_id>/part-*.parquet`` and ``manifest.json``, and one pointer per
dataset, ``<target>/<dataset>/LATEST`` (JSON: the release id and its manifest's path), moved only after a
manifest was written. Readers trust the manifest only: it lists every file with its size and SHA-256, and it
is written last; consumers find the current release through ``LATEST`` (:func:`read_latest`).

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

The ``LATEST`` pointer is one small object written after the manifest: atomically replaced on a local
filesystem (``os.replace`` under a ``flock``), a conditional whole-object PUT on S3 (``If-Match``), a plain
PUT on other object stores. A publisher that dies before it leaves the pointer at the previous release (whose
files are untouched); re-publishing the release moves it. It never moves back to a release created before the
one it names, also when publishers race (local and S3; elsewhere the race can leave the older one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec

from safesynth.errors import PublishError, SpecError
from safesynth.output import sha256_file
from safesynth.owner import Owner
from safesynth.publishers import PublishedRelease, PublishTarget, ReleaseInfo, register, release_info

__all__ = ["FilesPublisher", "PublishedRelease", "build_manifest_files", "find_published", "publish_release",
           "read_latest", "sweep_staging"]

MANIFEST = "manifest.json"
LATEST = "LATEST"


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
            _move_latest(target, dataset, release_id, existing, storage_options or {})  # a crash may have left it
            return PublishedRelease(location=final, manifest=_join(final, MANIFEST),
                                    files=tuple(f["path"] for f in manifest["files"]), already_published=True)
        raise PublishError(f"release `{release_id}` is already published at {final}; "
                           "choose a new --release-id (published releases are immutable)")
    if _is_local(target):
        _publish_local(files, _dumps(manifest), _local_path(target) / dataset, release_id)
    else:
        _publish_remote(files, manifest, final, storage_options or {})
    _move_latest(target, dataset, release_id, manifest, storage_options or {})
    return PublishedRelease(location=final, manifest=_join(final, MANIFEST), files=tuple(p.name for p in files))


# ------------------------------------------------------------------------------------ LATEST pointer


def read_latest(target: str, dataset: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The dataset's ``LATEST`` pointer (``release_id``, ``manifest``, ``created_at``), or None if absent.

    Raises:
        PublishError: the pointer exists but cannot be read or is not a pointer.
    """
    url = _join(target, dataset, LATEST)
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except OSError as exc:
        raise PublishError(f"cannot read {url}: {exc.__class__.__name__}") from exc
    return _read_pointer(fs, path, url)


def _read_pointer(fs: Any, path: str, url: str) -> dict[str, Any] | None:
    """The pointer at ``path`` on ``fs`` (``url`` names it in errors), or None if absent."""
    try:
        if not fs.exists(path):
            return None
        raw = fs.cat_file(path)
    except OSError as exc:
        raise PublishError(f"cannot read {url}: {exc.__class__.__name__}") from exc
    return _parse_pointer(raw, url)


def _stays(current: dict[str, Any] | None, release_id: str, created: Any) -> bool:
    """True if ``current`` already names this release or one created later: the pointer must not move."""
    if current is None:
        return False
    if current.get("release_id") == release_id:
        return True
    return created is not None and str(current.get("created_at") or "") > str(created)


def _parse_pointer(raw: bytes, url: str) -> dict[str, Any]:
    try:
        pointer = json.loads(raw)
    except ValueError as exc:
        raise PublishError(f"cannot read {url}: {exc.__class__.__name__}") from exc
    if not isinstance(pointer, dict) or not isinstance(pointer.get("release_id"), str):
        raise PublishError(f"cannot read {url}: not a safesynth LATEST pointer")
    return pointer


_LOST_PUT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def _precondition_failed(exc: BaseException) -> bool:
    """A conditional S3 PUT lost (HTTP 412, or 409 on a concurrent conditional write).

    s3fs translates botocore's ``ClientError`` (keeping it as the cause) into ``FileExistsError`` or another
    ``OSError``: the error code is read from the ``ClientError`` in the chain, else from the message.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the exception and its causes
        if seen is None:
            break
        if isinstance(seen, FileExistsError):
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") in _LOST_PUT_CODES or status == 412:
                return True
        text = str(seen)
        if any(code in text for code in _LOST_PUT_CODES) or "pre-conditions you specified did not hold" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: Conditional-PUT retries on S3 when another publisher moved the pointer between our read and our write.
_LATEST_RETRIES = 20


def _move_latest(target: str, dataset: str, release_id: str, manifest: dict[str, Any],
                 storage_options: dict[str, Any]) -> None:
    """Point ``LATEST`` at this release, unless it already names one created later. Call after the manifest.

    Read, compare and write are one step against concurrent publishers: under an exclusive ``flock`` on a
    local filesystem, as a conditional PUT (``If-Match`` the ETag read, or ``If-None-Match: *``) retried on
    S3. Other object stores have no conditional write here: two publishers racing there may leave the
    pointer at the older of their releases (the releases themselves are intact).
    """
    created = manifest.get("created_at")
    body = _dumps({"release_id": release_id, "manifest": f"{release_id}/{MANIFEST}", "created_at": created})
    url = _join(target, dataset, LATEST)
    try:
        if _is_local(target):
            _move_latest_local(_local_path(target) / dataset, url, release_id, created, body)
            return
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol in ("s3", "s3a"):
            _move_latest_s3(fs, path, url, release_id, created, body)
            return
        if _stays(_read_pointer(fs, path, url), release_id, created):
            return
        fs.pipe_file(path, body)  # one whole-object PUT
        fs.invalidate_cache(path)
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001 - the release itself is published; the pointer is a convenience
        raise PublishError(f"release `{release_id}` is published, but {url} could not be moved "
                           f"({exc.__class__.__name__}); publish it again to move the pointer") from exc


def _move_latest_local(parent: Path, url: str, release_id: str, created: Any, body: bytes) -> None:
    import fcntl

    with (parent / f".{LATEST}.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        pointer = parent / LATEST
        current = _parse_pointer(pointer.read_bytes(), url) if pointer.exists() else None
        if _stays(current, release_id, created):
            return
        tmp = parent / f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_bytes(body)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, pointer)  # atomic: readers see the old pointer or the new one
        finally:
            tmp.unlink(missing_ok=True)


def _move_latest_s3(fs: Any, path: str, url: str, release_id: str, created: Any, body: bytes) -> None:
    bucket, key = path.split("/", 1)
    for _ in range(_LATEST_RETRIES):
        try:
            etag: str | None = fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
        except FileNotFoundError:
            etag = None
        # The body may be newer than the ETag; then the conditional PUT below fails and we read again.
        current = None if etag is None else _parse_pointer(fs.cat_file(path), url)
        if _stays(current, release_id, created):
            return
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
        except Exception as exc:  # noqa: BLE001
            if _precondition_failed(exc):
                continue  # another publisher moved it meanwhile: compare again
            raise
        finally:
            fs.invalidate_cache(path)
        return
    raise PublishError(f"release `{release_id}` is published, but {url} kept changing under "
                       f"{_LATEST_RETRIES} attempts to move it; publish it again to move the pointer")


def list_published(target: str, dataset: str, storage_options: dict[str, Any] | None = None) -> list[ReleaseInfo]:
    """Every release of ``dataset`` with a manifest under ``target``, oldest first. Partial ones have none."""
    root = _join(target, dataset)
    try:
        fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        found = fs.glob(f"{path.rstrip('/')}/*/{MANIFEST}") if fs.exists(path) else []
    except OSError as exc:
        raise PublishError(f"cannot list {root}: {exc.__class__.__name__}: {exc}") from exc
    out = []
    for manifest_path in found:
        release_id = manifest_path.rstrip("/").split("/")[-2]
        if release_id.startswith("."):
            continue  # a local staging directory
        manifest = find_published(target, dataset, release_id, storage_options)
        if manifest is not None:
            out.append(release_info(manifest, dataset=dataset, release_id=release_id,
                                    location=_join(target, dataset, release_id)))
    return sorted(out, key=lambda r: (r.created_at or "", r.release_id))


@register
class FilesPublisher:
    """``publish.format: files``: Parquet parts and a manifest per release, a ``LATEST`` pointer per dataset."""

    format = "files"

    def __init__(self, target: PublishTarget) -> None:
        self.target = target.target
        self.storage_options = dict(target.storage_options)

    def check(self) -> None:
        if _is_local(self.target):
            return  # safesynth.preflight.check_target checks the directory
        try:
            fsspec.core.url_to_fs(self.target, **self.storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise SpecError(f"`publish.target` ({self.target}) cannot be opened: {exc.__class__.__name__}: "
                            f"{exc}") from exc

    def check_schema(self, schema: Any) -> None:
        del schema  # every release has its own files

    def location(self, dataset: str, release_id: str) -> str:
        return _join(self.target, dataset, release_id)

    def find(self, dataset: str, release_id: str) -> dict[str, Any] | None:
        return find_published(self.target, dataset, release_id, self.storage_options)

    def publish(self, files: list[Path], manifest: dict[str, Any], *, dataset: str,
                release_id: str) -> PublishedRelease:
        return publish_release(files, manifest, target=self.target, dataset=dataset, release_id=release_id,
                               storage_options=self.storage_options)

    def releases(self, dataset: str) -> list[ReleaseInfo]:
        return list_published(self.target, dataset, self.storage_options)

    def latest(self, dataset: str) -> ReleaseInfo | None:
        pointer = read_latest(self.target, dataset, self.storage_options)
        if pointer is None:  # published before the pointer existed: the newest manifest
            found = self.releases(dataset)
            return found[-1] if found else None
        release_id = pointer["release_id"]
        manifest = self.find(dataset, release_id)
        if manifest is None:
            raise PublishError(f"{_join(self.target, dataset, LATEST)} names release `{release_id}`, which has "
                               "no manifest")
        return release_info(manifest, dataset=dataset, release_id=release_id,
                            location=self.location(dataset, release_id))


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
    _remove_unlisted(fs, root, {renamed[p.name] for p in files})


def _remove_unlisted(fs: Any, root: str, listed: set[str]) -> None:
    """Remove parts our manifest does not name: those of an attempt that died before its manifest."""
    try:
        for path in fs.ls(root, detail=False, refresh=True):
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            if name != MANIFEST and name not in listed:
                fs.rm_file(path)
    except Exception:  # noqa: BLE001, S110 - best effort: unlisted parts are never read (readers trust the manifest)
        pass


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
            if _precondition_failed(exc):
                raise PublishError(f"another publisher won the race for {path}; this release was not published") from exc
            raise
        fs.invalidate_cache(path)
        return
    if fs.exists(path):
        raise PublishError(f"{path} appeared while publishing; this release was not published")
    with fs.open(path, "wb") as fh:
        fh.write(body)
