"""``safesynth budget``: inspect the privacy-budget ledger, and the two operator actions on it.

Commands:

* ``show DATASET``: lifetime, spent and remaining budget, and every release attempt. Reads only: on a
  SQLite ledger that does not exist yet it creates nothing and prints one line ("nothing recorded yet",
  exit 0); an unknown dataset in an existing ledger is an error (exit 1: most likely a typo).
* ``set-lifetime DATASET --epsilon E [--delta D]``: change the recorded lifetime budget (never below
  what is spent). Specs must then declare the same lifetime.
* ``abandon DATASET RELEASE_ID``: close an in-flight attempt whose process is gone (e.g. it crashed on
  another host): "failed" at its plan if it read data, else "cancelled".
* ``rebind DATASET --source-key KEY``: bind the dataset's budget to another source (the data moved). A
  release is refused when its source is budgeted under another dataset name, or its dataset under
  another source; the refusal prints the key to pass here.

Every command takes ``--ledger-url``; without it the ledger is ``$SAFESYNTH_LEDGER_URL``, else the
default SQLite file in ``$SAFESYNTH_HOME`` (see :func:`safesynth.privacy.ledger.resolve_ledger_url`).
Mounted by ``flows/cli.py`` as ``app.add_typer(budget_app, name="budget")``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, NoReturn

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


@budget_app.command("show")
def show(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    ledger_url: LedgerUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a dataset's lifetime budget, what its releases spent, and what remains."""
    out = Console()
    try:
        url, source = resolve_with_source(override=ledger_url)
        book = Ledger.open_existing(url, source=source)
        if book is None:
            _nothing_recorded(out, dataset, display_url(url), as_json=as_json)
            return
        with book:
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
    try:
        url, source = resolve_with_source(override=ledger_url)
        book = Ledger.open_existing(url, source=source)
        if book is None:
            _fail(f"no budget ledger at {display_url(url)}: nothing to abandon", 1)
        with book:
            closed = book.abandon(dataset, release_id)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    for r in closed:
        charged = "refunded" if r.status == "cancelled" else f"charged epsilon {_fmt(r.epsilon)}, delta {_fmt(r.delta, 3)}"
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
        url, source = resolve_with_source(override=ledger_url)
        existing = Ledger.open_existing(url, source=source)
        if existing is None:
            _fail(f"no budget ledger at {display_url(url)}: nothing to rebind", 1)
        existing.close()
        with Ledger.open(url, source=source) as book:  # migrates an older ledger (the source columns)
            summary = book.rebind_source(dataset, source_key)
    except SafeSynthError as exc:
        _fail(str(exc), exc.exit_code)
    Console().print(f"dataset `{dataset}`: budget bound to source {summary.source_key}", highlight=False,
                    markup=False, soft_wrap=True)


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
