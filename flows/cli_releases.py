"""``safesynth releases``: what was published, read from the publish target itself.

Commands:

* ``list TARGET DATASET``: every published release of the dataset, oldest first, with its epsilon and delta
  and its files (``files``) or table version / snapshot (``delta``, ``iceberg``); the latest is marked.
* ``show TARGET DATASET [RELEASE_ID|latest]``: one release (default: the latest, the one consumers read).

``TARGET`` is ``publish.target`` of the spec (a directory or URL; the warehouse for ``iceberg``); pass
``--format`` and, for ``iceberg``, ``--catalog`` and ``--table`` as in the spec. Only published-zone values
are printed: the manifest's DP figures and spec constants. Reading needs no ledger and reads no private data.
Mounted by ``flows/cli.py`` as ``app.add_typer(releases_app, name="releases")``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safesynth.errors import SafeSynthError, SpecError
from safesynth.publishers import Publisher, PublishTarget, ReleaseInfo, create_publisher, show_release

__all__ = ["releases_app"]

releases_app = typer.Typer(help="List and show published releases.", no_args_is_help=True, add_completion=False)

Target = Annotated[str, typer.Argument(help="publish.target: directory or URL (the warehouse for iceberg).")]
Dataset = Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")]
Format = Annotated[str, typer.Option("--format", help="publish.format: files, delta or iceberg.")]
Catalog = Annotated[str | None, typer.Option("--catalog", help="iceberg: SQLAlchemy URL of the catalog.")]
TableName = Annotated[str | None, typer.Option("--table", help="iceberg: the table, namespace.name.")]
Options = Annotated[str | None, typer.Option("--storage-options", help="publish.storage_options as JSON.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@releases_app.callback()
def _releases() -> None:
    """List and show published releases."""


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _publisher(target: str, fmt: str, catalog: str | None, table: str | None, options: str | None) -> Publisher:
    try:
        storage = json.loads(options) if options else {}
    except ValueError:
        raise SpecError("`--storage-options` must be a JSON object") from None
    if not isinstance(storage, dict):
        raise SpecError("`--storage-options` must be a JSON object")
    if "://" not in target:
        target = str(Path(target).expanduser().resolve())
    if catalog is not None and catalog.startswith("sqlite:///") and not catalog.startswith("sqlite:////"):
        catalog = "sqlite:///" + str(Path(catalog.removeprefix("sqlite:///")).resolve())
    publisher = create_publisher(PublishTarget(format=fmt, target=target, storage_options=storage,
                                               catalog=catalog, table=table))
    publisher.check()
    return publisher


@releases_app.command("list")
def list_cmd(target: Target, dataset: Dataset, fmt: Format = "files", catalog: Catalog = None,
             table: TableName = None, storage_options: Options = None, as_json: AsJson = False) -> None:
    """List the published releases of a dataset, oldest first, with their epsilon."""
    try:
        publisher = _publisher(target, fmt, catalog, table, storage_options)
        found = publisher.releases(dataset)
        latest = publisher.latest(dataset) if found else None
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    out = Console()
    latest_id = None if latest is None else latest.release_id
    if as_json:
        out.print_json(json.dumps({"dataset": dataset, "format": fmt, "latest": latest_id,
                                   "releases": [r.to_dict() for r in found]}))
        return
    out.print(_table(found, latest_id, title=f"Releases of `{escape(dataset)}` ({fmt})"))


@releases_app.command("show")
def show_cmd(target: Target, dataset: Dataset,
             release_id: Annotated[str, typer.Argument(help="A release id, or `latest`.")] = "latest",
             fmt: Format = "files", catalog: Catalog = None, table: TableName = None,
             storage_options: Options = None, as_json: AsJson = False) -> None:
    """Show one published release (default: the latest) with its privacy figures."""
    try:
        publisher = _publisher(target, fmt, catalog, table, storage_options)
        info = show_release(publisher, dataset, release_id)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    out = Console()
    if as_json:
        out.print_json(json.dumps(info.to_dict(with_manifest=True)))
        return
    out.print(_table([info], None, title=f"Release `{escape(info.release_id)}` ({fmt})"))
    privacy: dict[str, Any] = dict(info.manifest.get("privacy") or {})
    lines = [f"location: {info.location}"]
    if privacy:
        lines.append(f"accountant: {privacy.get('accountant', '-')}; stages: " + ", ".join(
            f"{s.get('stage')} eps={_fmt(s.get('epsilon'))}" for s in privacy.get("stages", [])))
    gate = info.manifest.get("gate") or {}
    if gate:
        lines.append(f"gate passed: {gate.get('passed')}")
    if info.manifest.get("spec_digest"):
        lines.append(f"spec digest: {info.manifest['spec_digest']}")
    for line in lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number:.{digits}g}" if math.isfinite(number) else "inf"


def _table(found: list[ReleaseInfo], latest: str | None, *, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("release", "created (UTC)", "epsilon", "delta", "files / version"):
        table.add_column(name, overflow="fold", no_wrap=name == "release")
    for r in found:
        mark = " (latest)" if r.release_id == latest else ""
        where = f"version {r.version}" if r.version is not None else ", ".join(r.files)
        table.add_row(escape(r.release_id) + mark, (r.created_at or "-")[:19].replace("T", " "), _fmt(r.epsilon),
                      _fmt(r.delta, 3), escape(where))
    if not found:
        table.add_row("(none)", "", "", "", "")
    return table
