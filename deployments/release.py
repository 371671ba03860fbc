"""Serve the release flow on a schedule from one long-lived process.

    python -m safesynth.deployments.release data/demo.yaml --cron "0 2 * * 1"

For separate scheduling and execution (work pools and workers), see ``prefect.yaml`` at the repository
root: ``prefect deploy --all`` then ``prefect worker start --pool safesynth``.
Each scheduled run gets a fresh release id; the ledger refuses runs once the dataset's lifetime budget is
spent, so a schedule cannot silently overspend.
"""

from __future__ import annotations

import argparse

from safesynth.flows.release import release

#: The release schedule, in one place: Mondays 02:00 UTC.
WEEKLY = "0 2 * * 1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="release spec YAML (privacy numbers live there, not in parameters)")
    parser.add_argument("--cron", default=WEEKLY, help=f"schedule (default: {WEEKLY!r}, Mondays 02:00 UTC)")
    parser.add_argument("--name", default="weekly", help="deployment name")
    args = parser.parse_args(argv)
    # limit=1: one release at a time per served deployment; the ledger also serialises reservations.
    release.serve(name=args.name, cron=args.cron, parameters={"spec_path": args.spec}, limit=1)


if __name__ == "__main__":  # pragma: no cover
    main()
