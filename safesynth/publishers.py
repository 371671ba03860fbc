"""Publishers: every store a release can be published to, behind one interface chosen by ``publish.format``.

A publisher takes the release's Parquet parts and its manifest (built from DP outputs and spec constants
only: the published zone) and makes them visible in one atomic step, or not at all:

- ``files`` (:mod:`safesynth.publish`): a local directory or any fsspec URL; the manifest is the commit
  and a ``LATEST`` pointer per dataset moves after it;
- ``delta`` (:mod:`safesynth.publish_delta`): one Delta Lake commit per release;
- ``iceberg`` (:mod:`safesynth.publish_iceberg`): one Iceberg snapshot per release (SQL catalog).

Every publisher keeps the same rules: re-publishing a release id with the same manifest is a no-op, with a
different manifest it is refused (published releases are immutable); of two publishers racing on one
release id exactly one wins and the other raises :class:`~safesynth.errors.PublishError`; earlier releases
stay readable. The table formats put the privacy metadata (:func:`privacy_properties`) into the commit or
snapshot properties.

A new store is one module with one class decorated with :func:`register`, and one line in ``_MODULES``
(modules are imported on first use, so ``deltalake`` and ``pyiceberg`` stay optional).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from safesynth.errors import PublishError, SpecError

if TYPE_CHECKING:
    import pyarrow as pa

    from safesynth.spec import ReleaseSpec

__all__ = [
    "PUBLISHERS",
    "PublishTarget",
    "PublishedRelease",
    "Publisher",
    "ReleaseInfo",
    "check_columns",
    "create_publisher",
    "known_formats",
    "manifest_digest",
    "privacy_properties",
    "publisher_for",
    "register",
    "release_info",
    "show_release",
]

#: Built-in formats and the module that registers each (imported on first use).
_MODULES: dict[str, str] = {
    "files": "safesynth.publish",
    "delta": "safesynth.publish_delta",
    "iceberg": "safesynth.publish_iceberg",
}
#: Prefix of the privacy metadata keys in commit and snapshot properties.
PROPERTY_PREFIX = "safesynth."


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishTarget:
    """Where and how to publish: ``publish`` of the spec, with ``target`` resolved."""

    format: str = "files"
    target: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    catalog: str | None = None
    table: str | None = None

    @classmethod
    def from_spec(cls, spec: ReleaseSpec) -> PublishTarget:
        p = spec.publish
        catalog = None if p.catalog is None else _resolve_sqlite(p.catalog, spec)
        return cls(format=p.format, target=spec.target_uri, storage_options=dict(p.storage_options),
                   catalog=catalog, table=p.table)


def _resolve_sqlite(url: str, spec: ReleaseSpec) -> str:
    """A relative SQLite catalog path is relative to the spec file, like every other path in a spec."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + spec.resolve(url.removeprefix(prefix))
    return url


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedRelease:
    """A release as published: where it is, its manifest, its files (or table ``version``)."""

    location: str
    manifest: str
    files: tuple[str, ...]
    already_published: bool = False
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseInfo:
    """What a consumer sees of one published release (published-zone values only)."""

    dataset: str
    release_id: str
    created_at: str | None
    epsilon: float | None
    delta: float | None
    location: str
    version: str | None = None
    files: tuple[str, ...] = ()
    manifest: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, *, with_manifest: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "release_id": self.release_id,
                               "created_at": self.created_at, "epsilon": self.epsilon, "delta": self.delta,
                               "location": self.location, "version": self.version, "files": list(self.files)}
        if with_manifest:
            out["manifest"] = dict(self.manifest)
        return out


class Publisher(Protocol):
    """A store releases are published to. Built from a :class:`PublishTarget`."""

    format: ClassVar[str]

    def __init__(self, target: PublishTarget) -> None: ...

    def check(self) -> None:
        """Everything checkable without private data and without writing (run before the budget is reserved).

        Raises:
            SpecError: the target cannot be published to as configured.
        """
        ...

    def check_schema(self, schema: pa.Schema) -> None:
        """An existing table can take rows of ``schema`` (the spec's declared columns; checked in preflight).

        Raises:
            SpecError: a column has another type in the table, or the table cannot be read.
        """
        ...

    def location(self, dataset: str, release_id: str) -> str:
        """Where the release is (or would be) visible, for people and logs."""
        ...

    def find(self, dataset: str, release_id: str) -> dict[str, Any] | None:
        """The manifest of the published release, or None. Raises PublishError if unreadable."""
        ...

    def publish(self, files: list[Path], manifest: dict[str, Any], *, dataset: str,
                release_id: str) -> PublishedRelease:
        """Publish atomically; a no-op for the same manifest, PublishError for a different one."""
        ...

    def releases(self, dataset: str) -> list[ReleaseInfo]:
        """The dataset's published releases, oldest first."""
        ...

    def latest(self, dataset: str) -> ReleaseInfo | None:
        """The release consumers should read, or None when nothing is published."""
        ...


class VersionedTable:
    """The reading side of a table format where each release is one version (a Delta commit, an Iceberg
    snapshot) whose properties hold the release's manifest (:func:`privacy_properties`).

    Subclasses give :meth:`_open` and :meth:`_versions` (and the rest of :class:`Publisher`).
    """

    def location(self, dataset: str, release_id: str) -> str:
        raise NotImplementedError

    def _open(self) -> Any:
        """The table, or None when it does not exist yet. Raises PublishError if it cannot be read."""
        raise NotImplementedError

    def _versions(self, table: Any) -> list[tuple[int, dict[str, Any]]]:
        """``(version, manifest)`` of every safesynth version of ``table``, oldest first."""
        raise NotImplementedError

    def _find(self, table: Any, release_id: str) -> tuple[int, dict[str, Any]] | None:
        return next(((v, m) for v, m in self._versions(table) if m.get("release_id") == release_id), None)

    def find(self, dataset: str, release_id: str) -> dict[str, Any] | None:
        table = self._open()
        found = None if table is None else self._find(table, release_id)
        return None if found is None else found[1]

    def releases(self, dataset: str) -> list[ReleaseInfo]:
        table = self._open()
        if table is None:
            return []
        where = self.location(dataset, "")
        return [release_info(m, dataset=dataset, release_id=str(m.get("release_id")), location=where,
                             version=str(v))
                for v, m in self._versions(table) if m.get("dataset") == dataset]

    def latest(self, dataset: str) -> ReleaseInfo | None:
        found = self.releases(dataset)
        return found[-1] if found else None


PUBLISHERS: dict[str, type[Publisher]] = {}

P = TypeVar("P", bound=type[Any])


def register(cls: P) -> P:
    """Class decorator: add ``cls`` to :data:`PUBLISHERS` under ``cls.format``.

    Raises:
        ValueError: another class is registered under the same format.
    """
    name = str(cls.format)
    if name in PUBLISHERS and PUBLISHERS[name] is not cls:
        raise ValueError(f"publish format `{name}` is already registered")
    PUBLISHERS[name] = cls
    return cls


def known_formats() -> tuple[str, ...]:
    """Every format a spec may name: the built-in ones and any registered since."""
    return tuple(sorted({*_MODULES, *PUBLISHERS}))


def create_publisher(target: PublishTarget) -> Publisher:
    """The publisher for ``target.format``, its module imported on first use.

    Raises:
        SpecError: the format is unknown, or its optional library is not installed.
    """
    if target.format not in PUBLISHERS:
        module = _MODULES.get(target.format)
        if module is None:
            raise SpecError(f"`publish.format` ({target.format!r}) must be one of {list(known_formats())}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            extra = {"delta": "deltalake==1.6.6", "iceberg": "'pyiceberg[sql-sqlite,pyarrow,s3fs]==0.12.0'"}
            raise SpecError(f"`publish.format` ({target.format}) needs an optional package that is not "
                            f"installed ({exc.name}): pip install {extra.get(target.format, exc.name)} "
                            f"(or 'safesynth[{target.format}]')") from exc
    return PUBLISHERS[target.format](target)


def publisher_for(spec: ReleaseSpec) -> Publisher:
    """The publisher of a spec's ``publish`` section."""
    return create_publisher(PublishTarget.from_spec(spec))


# ------------------------------------------------------------------------------ published metadata


def canonical_json(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON: equal manifests, equal releases."""
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()


def privacy_properties(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The commit / snapshot properties of a release: published-zone values from its manifest only.

    The manifest is built from DP outputs and spec constants (:func:`safesynth.stages.build_manifest`); the
    properties repeat its identity and privacy figures as flat strings for table tools, and hold the whole
    manifest as JSON. Nothing else is added: no exact count and no data value.
    """
    privacy = manifest.get("privacy") or {}
    flat = {
        "format": manifest.get("format"),
        "dataset": manifest.get("dataset"),
        "release_id": manifest.get("release_id"),
        "created_at": manifest.get("created_at"),
        "spec_digest": manifest.get("spec_digest"),
        "epsilon": None if privacy.get("epsilon") is None else repr(float(privacy["epsilon"])),
        "delta": None if privacy.get("delta") is None else repr(float(privacy["delta"])),
        "accountant": privacy.get("accountant"),
        "manifest_sha256": manifest_digest(manifest),
        "manifest": canonical_json(manifest),
    }
    return {PROPERTY_PREFIX + k: str(v) for k, v in flat.items() if v is not None}


def manifest_from_properties(props: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest stored by :func:`privacy_properties`, or None for a commit safesynth did not make."""
    raw = props.get(PROPERTY_PREFIX + "manifest")
    if not isinstance(raw, str):
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise PublishError(f"commit property `{PROPERTY_PREFIX}manifest` is not valid JSON") from exc
    return manifest if isinstance(manifest, dict) else None


def release_info(manifest: Mapping[str, Any], *, dataset: str, release_id: str, location: str,
                 version: str | None = None) -> ReleaseInfo:
    """A :class:`ReleaseInfo` from a manifest (what ``safesynth releases`` prints)."""
    privacy = manifest.get("privacy") or {}

    def number(key: str) -> float | None:
        value = privacy.get(key)
        return None if value is None else float(value)

    # A table's release has a version, not files of its own (the manifest's parts were written into it).
    files = () if version is not None else tuple(
        str(f.get("path", "")) for f in manifest.get("files", []) if isinstance(f, dict))
    created = manifest.get("created_at")
    return ReleaseInfo(dataset=dataset, release_id=release_id, created_at=None if created is None else str(created),
                       epsilon=number("epsilon"), delta=number("delta"), location=location, version=version,
                       files=files, manifest=dict(manifest))


def check_columns(existing: pa.Schema, wanted: pa.Schema, *, where: str) -> None:
    """Refuse a release whose declared columns have other types than the table's (before any spend).

    Raises:
        SpecError: naming the columns and both types (schema only, never values).
    """
    import pyarrow as pa

    def family(t: pa.DataType) -> str:
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "string"
        return str(t)

    have = {f.name: f.type for f in existing}
    bad = [f"{f.name} ({family(have[f.name])} there, {family(f.type)} here)" for f in wanted
           if f.name in have and family(have[f.name]) != family(f.type)]
    if bad:
        raise SpecError(f"`publish.target` ({where}): columns have other types in the existing table: "
                        f"{', '.join(bad)}; publish into a new table (or keep the column types)")


def same_manifest(existing: Mapping[str, Any], manifest: Mapping[str, Any]) -> bool:
    return manifest_digest(existing) == manifest_digest(manifest)


# ------------------------------------------------------------------------------------------- reading


def show_release(publisher: Publisher, dataset: str, release_id: str = "latest") -> ReleaseInfo:
    """One published release of ``dataset``: ``release_id``, or the one consumers read for ``"latest"``.

    Raises:
        PublishError: nothing is published under that id (or at all, for ``"latest"``).
    """
    if release_id == "latest":
        found = publisher.latest(dataset)
        if found is None:
            raise PublishError(f"no release of dataset `{dataset}` is published there")
        return found
    for info in publisher.releases(dataset):
        if info.release_id == release_id:
            return info
    raise PublishError(f"release `{release_id}` of dataset `{dataset}` is not published there")
