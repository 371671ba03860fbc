"""``safesynth budget``: inspect the privacy-budget ledger (read-only).

Mounted by ``safesynth/cli.py`` as ``app.add_typer(budget_app, name="budget")``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from safesynth.errors import SafeSynthError
from safesynth.privacy.ledger import BudgetSummary, Ledger, ReleaseRecord

__all__ = ["budget_app"]

budget_app = typer.Typer(
    help="Inspect the privacy budget recorded in the ledger.",
    no_args_is_help=True,
    add_completion=False,
)


@budget_app.callback()
def _budget() -> None:
    """Inspect the privacy budget recorded in the ledger."""


@budget_app.command("show")
def show(
    dataset: Annotated[str, typer.Argument(help="Dataset name (the spec's `dataset`).")],
    ledger: Annotated[
        str | None,
        typer.Option("--ledger", help="SQLAlchemy URL of the ledger; default: sqlite in $SAFESYNTH_HOME."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a dataset's lifetime budget, what its releases spent, and what remains."""
    out = Console()
    try:
        with Ledger.open(ledger) as book:
            summary = book.summary(dataset)
    except SafeSynthError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(code=exc.exit_code) from None
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
        return
    out.print(_overview(summary))
    out.print(_releases(summary.releases))


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else "inf"


def _overview(summary: BudgetSummary) -> Table:
    table = Table(title=f"Privacy budget of dataset `{summary.dataset}`", show_header=True)
    table.add_column("")
    table.add_column("epsilon", justify="right")
    table.add_column("delta", justify="right")
    table.add_row("lifetime", _fmt(summary.lifetime_epsilon), _fmt(summary.lifetime_delta, 3))
    table.add_row("spent (summed; admits releases)", _fmt(summary.spent_epsilon_basic),
                  _fmt(summary.spent_delta_basic, 3))
    table.add_row("spent (composed, RDP at lifetime delta)", _fmt(summary.spent_epsilon_composed), "")
    table.add_row("remaining", _fmt(summary.remaining_epsilon), _fmt(summary.remaining_delta, 3))
    table.caption = "A release is admitted only if the summed spend plus its own fits the lifetime budget."
    return table


def _status(record: ReleaseRecord) -> str:
    if record.status == "reserved":
        return "reserved+data_read" if record.data_read else "reserved"
    return record.status


def _releases(records: tuple[ReleaseRecord, ...]) -> Table:
    # Compact box so one release fits an 80-column terminal; planned epsilon is in --json.
    table = Table(title="Releases", show_header=True, box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("release", "left"), ("#", "right"), ("status", "left"),
                          ("epsilon", "right"), ("delta", "right"), ("created (UTC)", "left")):
        # Values are never truncated: the release id (what people copy) stays on one line, others wrap.
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name == "release",  # type: ignore[arg-type]
                         min_width=len(records[0].release_id) if name == "release" and records else None)
    for r in records:
        table.add_row(r.release_id, str(r.attempt), _status(r), _fmt(r.epsilon), _fmt(r.delta, 3),
                      r.created_at.strftime("%Y-%m-%d %H:%M"))
    if not records:
        table.add_row("(none)", "", "", "", "", "")
    return table
