"""Prefect deployment definitions (schedules, parameters, work pools) for the release flow."""
