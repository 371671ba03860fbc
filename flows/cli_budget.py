"""``safesynth budget``: inspect the privacy-budget ledger, and the two operator actions on it.

Commands:

* ``list``: every dataset in the ledger with its lifetime, spent (closed releases), in flight (open
  reservations, at their plan) and remaining budget. Reads only, like ``show``.
* ``show DATASET``: lifetime, spent and remaining budget, and every release attempt. Reads only: on a
  SQLite ledger that does not exist yet it creates nothing and prints one line ("nothing recorded yet",
  exit 0); an unknown dataset in an existing ledger is an error (exit 1: most likely a typo).
* ``set-lifetime DATASET --epsilon E [--delta D]``: change the recorded lifetime budget (never below
  what is spent). Specs must then declare the same lifetime.
* ``abandon DATASET RELEASE_ID``: close an in-flight attempt whose process is gone (e.g. it crashed on
  another host): "failed" at its plan if it read data, else "cancelled".
* ``cancel DATASET RELEASE_ID``: the refund-only subset of ``abandon``: close the in-flight attempts of a
  release that never read data, as "cancelled" (refunded). One that read data is refused (exit 3) and
  nothing is closed: its budget stays spent (``abandon`` closes it at its plan).
* ``rebind DATASET --source-key KEY``: bind the dataset's budget to another source (the data moved). A
  release is refused when its source is budgeted under another dataset name, or its dataset under
  another source; the refusal prints the key to pass here.

Release ids are per dataset, hence ``DATASET RELEASE_ID``. Every command takes ``--ledger-url``; without it the ledger is ``$SAFESYNTH_LEDGER_URL``, else the
default SQLite file in ``$SAFESYNTH_HOME`` (see :func:`safesynth.privacy.ledger.resolve_ledger_url`).
Mounted by ``flows/cli.py`` as ``app.add_typer(budget_app, name="budget")``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safesynth.errors import SafeSynthError
from safesynth.privacy.ledger import BudgetSummary, Ledger, ReleaseRecord
from safesynth.privacy.ledger_store import display_url, resolve_with_source

__all__ = ["budget_app"]

budget_app = typer.Typer(
    help="Inspect the privacy budget recorded in the ledger.",
    no_args_is_help=True,
    add_completion=False,
)

LedgerUrl = Annotated[
    str | None,
    typer.Option("--ledger-url", "--ledger",
                 help="SQLAlchemy URL of the ledger; default: $SAFESYNTH_LEDGER_URL, else sqlite in $SAFESYNTH_HOME."),
]


@budget_app.callback()
def _budget() -> None:
    """Inspect the privacy budget recorded in the ledger."""


def _fail(message: str, code: int) -> NoReturn:
    # escape: messages hold literal brackets (`pip install 'safesynth[postgres]'`), not Rich markup.
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


@budget_app.command("list")
def list_datasets(
    ledger_url: LedgerUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the datasets as JSON.")] = False,
) -> None:
    """List every dataset in the ledger: lifetime, spent, in flight and remaining budget."""
    out = Console()
    try:
        with _existing(ledger_url) as (book, shown):
            if book is None:
                if as_json:
                    out.print_json(json.dumps({"ledger": shown, "exists": False, "datasets": []}))
                else:
                    out.print(f"no budget ledger at {shown}: nothing recorded yet (the first release creates it)",
                              highlight=False, markup=False, soft_wrap=True)
                return
            lines = [book.summary(name).overview() for name in book.datasets()]
            shown = book.url
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        out.print_json(json.dumps({"ledger": shown, "exists": True, "datasets": lines}))
        return
    out.print(_datasets(lines, shown))


def _datasets(lines: list[dict[str, Any]], url: str) -> Table:
    # Epsilon unless marked; the figures keep their width, a long dataset name folds.
    table = Table(title="Privacy budget by dataset (epsilon)", show_header=True, box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("dataset", overflow="fold")
    for name in ("lifetime", "spent", "in flight", "remaining", "delta left", "releases"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for d in lines:
        flight = _fmt(d["in_flight_epsilon"]) + (f" ({d['in_flight_releases']})" if d["in_flight_releases"] else "")
        table.add_row(escape(d["dataset"]), _fmt(d["lifetime_epsilon"]), _fmt(d["spent_epsilon"]), flight,
                      _fmt(d["remaining_epsilon"]), _fmt(d["remaining_delta"], 3), str(d["releases"]))
    if not lines:
        table.add_row("(none)", "", "", "", "", "", "")
    table.caption = (f"Ledger {escape(url)}. Remaining = lifetime - spent - in flight (open reservations, at "
                     "their plan): what admits a release. Per release: `safesynth budget show DATASET`.")
    return table


@budget_app.command("show")
def show(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    ledger_url: LedgerUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a dataset's lifetime budget, what its releases spent, and what remains."""
    out = Console()
    try:
        with _existing(ledger_url) as (book, shown):
            if book is None:
                _nothing_recorded(out, dataset, shown, as_json=as_json)
                return
            summary = book.summary(dataset)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
        return
    out.print(_overview(summary))
    out.print(_releases(summary.releases))


def _nothing_recorded(out: Console, dataset: str, url: str, *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"dataset": dataset, "ledger": url, "exists": False, "releases": []}))
    else:
        out.print(f"no budget ledger at {url}: nothing recorded yet (the first release creates it)",
                  highlight=False, markup=False, soft_wrap=True)


@budget_app.command("set-lifetime")
def set_lifetime(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    epsilon: Annotated[float, typer.Option("--epsilon", help="New lifetime epsilon.", min=0.0)],
    delta: Annotated[float | None, typer.Option("--delta", help="New lifetime delta; default: unchanged.",
                                                min=0.0, max=1.0)] = None,
    ledger_url: LedgerUrl = None,
) -> None:
    """Change a dataset's lifetime budget (never below what it already spent)."""
    try:
        url, source = resolve_with_source(override=ledger_url)
        with Ledger.open(url, source=source) as book:
            summary = book.set_lifetime(dataset, epsilon=epsilon, delta=delta)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    except ValueError as exc:
        _fail(str(exc), 2)
    Console().print(f"dataset `{dataset}`: lifetime epsilon {_fmt(summary.lifetime_epsilon)}, delta "
                    f"{_fmt(summary.lifetime_delta, 3)}; remaining epsilon {_fmt(summary.remaining_epsilon)}, "
                    f"delta {_fmt(summary.remaining_delta, 3)}", highlight=False, markup=False, soft_wrap=True)


@budget_app.command("abandon")
def abandon(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    release_id: Annotated[str, typer.Argument(help="Release id of the stale attempt.")],
    ledger_url: LedgerUrl = None,
) -> None:
    """Close a stale in-flight attempt: failed at its plan if it read data, else cancelled (refunded)."""
    _close(dataset, release_id, ledger_url, refund_only=False)


@budget_app.command("cancel")
def cancel(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    release_id: Annotated[str, typer.Argument(help="Release id of the reservation to refund.")],
    ledger_url: LedgerUrl = None,
) -> None:
    """Refund a reservation that never read data; one that read data is refused (exit 3)."""
    _close(dataset, release_id, ledger_url, refund_only=True)


def _close(dataset: str, release_id: str, ledger_url: str | None, *, refund_only: bool) -> None:
    """``abandon`` and ``cancel``: one ledger call, :meth:`Ledger.abandon`, with or without ``refund_only``."""
    what = "cancel" if refund_only else "abandon"
    try:
        with _existing(ledger_url) as (book, shown):
            if book is None:
                _fail(f"no budget ledger at {shown}: nothing to {what}", 1)
            closed = book.abandon(dataset, release_id, refund_only=refund_only)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    for r in closed:
        if r.status == "cancelled":
            charged = f"refunded epsilon {_fmt(r.planned_epsilon)}, delta {_fmt(r.planned_delta, 3)}"
        else:
            charged = f"charged epsilon {_fmt(r.epsilon)}, delta {_fmt(r.delta, 3)}"
        Console().print(f"release `{release_id}` attempt {r.attempt}: {r.status} ({charged})", highlight=False,
                        markup=False)


@budget_app.command("rebind")
def rebind(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    source_key: Annotated[str, typer.Option(
        "--source-key", help="The new source: the key a refused release printed, or a path or URL.")],
    ledger_url: LedgerUrl = None,
) -> None:
    """Bind a dataset's budget to another source (the data moved); its spends stay."""
    try:
        with _existing(ledger_url) as (existing, shown):
            if existing is None:
                _fail(f"no budget ledger at {shown}: nothing to rebind", 1)
        url, source = resolve_with_source(override=ledger_url)
        with Ledger.open(url, source=source) as book:  # migrates an older ledger (the source columns)
            summary = book.rebind_source(dataset, source_key)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    Console().print(f"dataset `{dataset}`: budget bound to source {summary.source_key}", highlight=False,
                    markup=False, soft_wrap=True)


@contextlib.contextmanager
def _existing(ledger_url: str | None) -> Iterator[tuple[Ledger | None, str]]:
    """The ledger ``--ledger-url`` names (else the default) if it exists, else None, with its URL for display.

    Opens nothing that does not exist (a read must not create a ledger); the ledger is closed on exit.
    """
    url, source = resolve_with_source(override=ledger_url)
    book = Ledger.open_existing(url, source=source)
    if book is None:
        yield None, display_url(url)
        return
    with book:
        yield book, display_url(url)


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else "inf"


def _overview(summary: BudgetSummary) -> Table:
    table = Table(title=f"Privacy budget of dataset `{escape(summary.dataset)}`", show_header=True)
    table.add_column("")
    table.add_column("epsilon", justify="right")
    table.add_column("delta", justify="right")
    table.add_row("lifetime", _fmt(summary.lifetime_epsilon), _fmt(summary.lifetime_delta, 3))
    table.add_row("spent (summed)", _fmt(summary.spent_epsilon_basic), _fmt(summary.spent_delta_basic, 3))
    table.add_row("remaining (admits releases)", _fmt(summary.remaining_epsilon), _fmt(summary.remaining_delta, 3))
    table.add_row("[dim]spent (composed RDP; informational)[/dim]", _fmt(summary.spent_epsilon_composed), "")
    table.caption = ("A release is admitted only if the summed spend plus its own fits the lifetime budget; "
                     "the composed figure is not used for admission. Source: "
                     f"{escape(summary.source_key or 'not bound yet')}.")
    return table


def _status(record: ReleaseRecord) -> str:
    if record.status == "reserved":
        return "reserved+data_read" if record.data_read else "reserved"
    return record.status


def _releases(records: tuple[ReleaseRecord, ...]) -> Table:
    # Compact box so one release fits an 80-column terminal; planned epsilon and owner are in --json.
    table = Table(title="Releases", show_header=True, box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("release", "left"), ("#", "right"), ("status", "left"),
                          ("epsilon", "right"), ("delta", "right"), ("created (UTC)", "left")):
        # Values are never truncated: the release id (what people copy) stays on one line, others wrap.
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name == "release",  # type: ignore[arg-type]
                         min_width=len(records[0].release_id) if name == "release" and records else None)
    for r in records:
        table.add_row(escape(r.release_id), str(r.attempt), _status(r), _fmt(r.epsilon), _fmt(r.delta, 3),
                      r.created_at.strftime("%Y-%m-%d %H:%M"))
    if not records:
        table.add_row("(none)", "", "", "", "", "")
    return table
