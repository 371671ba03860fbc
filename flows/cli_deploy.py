"""``safesynth deploy`` and ``safesynth serve``: run a release spec on a schedule.

* ``deploy SPEC [--cron C] [--timezone TZ] [--pool P] [--name N]``: register the release flow with the
  configured Prefect server (``PREFECT_API_URL``) as the deployment ``safesynth-release/<dataset>`` on the
  process work pool ``P`` (created if missing); a ``prefect worker start --pool P`` runs it.
* ``serve SPEC [--cron C] [--timezone TZ] [--name N]``: serve the same deployment from this process until
  interrupted (single host: no work pool or worker). Prefect 3.8.8's embedded API runs no scheduler, so
  ``serve`` needs a server too (``prefect server start``, ``PREFECT_API_URL``).

The spec is checked first (every check that needs no private data); the schedule's defaults live in
:mod:`safesynth.deployments.release`. Mounted by ``flows/cli.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from safesynth.errors import SafeSynthError

__all__ = ["register"]

# The defaults are repeated in the help text only; the values come from deployments/release.py.
Spec = Annotated[Path, typer.Argument(help="Release spec YAML file (its absolute path is the only parameter).")]
CronOpt = Annotated[str | None, typer.Option("--cron", help="Cron schedule (default: Mondays 02:00).")]
TimezoneOpt = Annotated[str | None, typer.Option("--timezone", help="IANA time zone of the cron (default: UTC).")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Deployment name (default: the spec's dataset).")]


def _prefect_logs_only() -> None:
    # Prefect attaches its console handler to the `safesynth` logger (extra loggers) once imported.
    logging.getLogger("safesynth").handlers.clear()


def _fail(exc: SafeSynthError) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _require_server(command: str) -> str:
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise SafeSynthError(f"`safesynth {command}` needs a Prefect server (Prefect's embedded API runs no "
                             "scheduler): start one with `prefect server start` and set PREFECT_API_URL "
                             "(e.g. http://127.0.0.1:4200/api)")
    return str(api)


def deploy_cmd(spec: Spec, cron: CronOpt = None, timezone: TimezoneOpt = None,
               pool: Annotated[str | None, typer.Option("--pool", help="Process work pool (default: "
                                                        "safesynth; created if missing).")] = None,
               name: NameOpt = None) -> None:
    """Register the release as a scheduled Prefect deployment on a process work pool.

    Needs a Prefect server (PREFECT_API_URL); run it with `prefect worker start --pool POOL`.
    Exit codes: 0 deployed, 2 bad spec, schedule or pool, 1 no server or other errors.
    """
    _prefect_logs_only()
    import httpx
    from prefect.exceptions import PrefectException
    from safesynth.deployments import release as deployments

    try:
        api = _require_server("deploy")
        planned = deployments.plan_deployment(spec, cron=cron or deployments.DEFAULT_CRON,
                                              timezone=timezone or deployments.DEFAULT_TIMEZONE, name=name)
        pool_name = pool or deployments.DEFAULT_POOL
        try:
            deployment_id = deployments.deploy_release(planned, pool=pool_name)
        except (httpx.HTTPError, PrefectException) as exc:  # no server there, or it refused
            raise SafeSynthError(f"Prefect API at {api}: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    except SafeSynthError as exc:
        _fail(exc)
    out = Console()
    out.print(f"[green]deployed[/] {escape(planned.full_name)} ({deployment_id}): `{escape(planned.cron)}` "
              f"{escape(planned.timezone)}, pool {escape(pool_name)}, spec {escape(planned.spec_path)}",
              highlight=False, soft_wrap=True)
    out.print(f"   run it with: prefect worker start --pool {escape(pool_name)}   (now: prefect deployment run "
              f"'{escape(planned.full_name)}')", highlight=False, soft_wrap=True)


def serve_cmd(spec: Spec, cron: CronOpt = None, timezone: TimezoneOpt = None, name: NameOpt = None) -> None:
    """Serve the release on a schedule from this process until interrupted (no work pool or worker).

    Needs a Prefect server (PREFECT_API_URL) for the schedule. Exit codes: 2 bad spec or schedule, 1 no server.
    """
    _prefect_logs_only()
    from safesynth.deployments import release as deployments

    try:
        _require_server("serve")
        planned = deployments.plan_deployment(spec, cron=cron or deployments.DEFAULT_CRON,
                                              timezone=timezone or deployments.DEFAULT_TIMEZONE, name=name)
    except SafeSynthError as exc:
        _fail(exc)
    deployments.serve_release(planned)


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and ``serve`` to the ``safesynth`` command."""
    app.command("deploy")(deploy_cmd)
    app.command("serve")(serve_cmd)

