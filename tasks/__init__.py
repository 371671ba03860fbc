"""Prefect tasks: thin wrappers over safesynth stage functions (retries, caching, logging, artifacts)."""
