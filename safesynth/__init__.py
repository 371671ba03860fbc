"""safesynth: differentially private synthetic data releases, gated by a privacy audit."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("safesynth")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
