"""The published tables that define each benchmark (Nash-MTL, FAMO, ...), as data for `mtl compare --published`.

One YAML file per dataset under `mtlcli/report/papers/`, keyed by the registry's dataset name: `columns` names the
papers' columns as the dataset's `task metric`s, and each table (paper, table number, where it was read, protocol)
has rows of values in that order, as printed. A row may instead give `means` (metric -> mean over all tasks, for
papers that print only an average) and the paper's own Δm% (`delta_m`). A file whose dataset the registry does not
know is skipped, so data can ship before its dataset does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlcli.data import registry
from mtlcli.errors import DataError, MtlError
from mtlcli.methods import REGISTRY as METHODS
from mtlcli.names import METRIC_NAMES
from mtlcli.results import MetricKey

PAPERS_DIR = Path(__file__).with_name("papers")
RUNS, PUBLISHED = "runs", "published"
TABLE_FIELDS = ("key", "cite", "title", "table", "url", "read_from", "protocol")


@dataclass(frozen=True)
class PublishedRow:
    """One method of a published table: its name as printed, mtl's method (if any) and its numbers."""

    name: str
    method: str | None
    values: dict[MetricKey, float]
    means: dict[str, float] = field(default_factory=dict)
    delta_m: float | None = None  # the paper's own Δm%
    single_task: bool = False
    note: str = ""


@dataclass(frozen=True)
class PublishedTable:
    """One table of one paper for one dataset, with where its numbers were read."""

    dataset: str
    key: str
    cite: str
    title: str
    table: str
    url: str
    read_from: str
    protocol: str
    rows: tuple[PublishedRow, ...]
    note: str = ""

    @property
    def source(self) -> str:
        """'Navon et al. 2022, Table 2'."""
        return f"{self.cite}, {self.table}"

    def label(self, row: PublishedRow) -> str:
        """The row's label in compare's tables, never mistaken for a run."""
        return f"{row.name} ({self.source}) [published]"

    @property
    def single_task(self) -> PublishedRow | None:
        return next((r for r in self.rows if r.single_task and r.values), None)


def load_tables(datasets: Iterable[str] | None = None, directory: Path | None = None) -> dict[str, list[PublishedTable]]:
    """Every published table per registered dataset (only `datasets`, when given), in file order."""
    wanted = None if datasets is None else set(datasets)
    out: dict[str, list[PublishedTable]] = {}
    for path in sorted((directory or PAPERS_DIR).glob("*.yaml")):
        document = read_document(path)
        try:
            spec = registry.get(document["dataset"])
        except DataError:
            continue  # a dataset this version of mtl does not have
        if wanted is not None and spec.name not in wanted:
            continue
        out.setdefault(spec.name, []).extend(tables_of(path, spec, document))
    return out


def read_document(path: Path) -> dict[str, Any]:
    """A published-tables file as parsed YAML (a mapping with a `dataset` name); MtlError otherwise."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MtlError(f"{path}: cannot read the published tables: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict) or not isinstance(document.get("dataset"), str):
        raise MtlError(f"{path}: expected a mapping with a `dataset` name")
    return document


def tables_of(path: Path, spec: registry.DatasetSpec, document: dict[str, Any]) -> list[PublishedTable]:
    """The validated tables of one file for the dataset `spec` (every column a task metric it reports)."""
    tables, keys = [], set()
    for index, entry in enumerate(document.get("tables") or []):
        where = f"{path.name}: tables[{index}]"
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) for k in TABLE_FIELDS):
            raise MtlError(f"{where}: every table needs the text fields {', '.join(TABLE_FIELDS)}")
        if entry["key"] in keys:
            raise MtlError(f"{where}: key {entry['key']!r} is used twice")
        keys.add(entry["key"])
        columns = _columns(f"{where}.columns", spec, entry.get("columns", document.get("columns", [])))
        rows = tuple(_row(f"{where} ({entry['key']})", spec, columns, raw) for raw in entry.get("rows") or [])
        if not rows:
            raise MtlError(f"{where}: no rows")
        tables.append(
            PublishedTable(spec.name, *(entry[k] for k in TABLE_FIELDS), rows=rows, note=str(entry.get("note", "")))
        )
    return tables


def _columns(where: str, spec: registry.DatasetSpec, columns: Any) -> list[MetricKey]:
    """`task metric` names -> (task, metric): a task of the dataset and one of mtl's metrics (a recipe may ask a task
    for metrics beyond its registered defaults, e.g. error beside accuracy)."""
    out = []
    for name in columns:
        task, _, metric = str(name).partition(" ")
        if spec.task(task) is None or metric not in METRIC_NAMES:
            raise MtlError(f"{where}: {name!r} is not a task metric of {spec.name}")
        out.append((task, metric))
    return out


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MtlError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _row(where: str, spec: registry.DatasetSpec, columns: list[MetricKey], raw: Any) -> PublishedRow:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise MtlError(f"{where}: every row needs a `name`")
    where = f"{where} row {raw['name']!r}"
    values = raw.get("values") or []
    if values and len(values) != len(columns):
        raise MtlError(f"{where}: {len(values)} values for {len(columns)} columns")
    means = {str(k): _number(where, v) for k, v in (raw.get("means") or {}).items()}
    if any(m not in METRIC_NAMES for m in means):
        raise MtlError(f"{where}: `means` names a metric mtl does not have")
    method = raw.get("method")
    if method is not None and method not in METHODS:
        raise MtlError(f"{where}: method {method!r} is not one of mtl's")
    delta = raw.get("delta_m")
    row = PublishedRow(
        name=raw["name"],
        method=method,
        values={key: _number(where, v) for key, v in zip(columns, values, strict=False)},
        means=means,
        delta_m=None if delta is None else _number(where, delta),
        single_task=bool(raw.get("single_task", False)),
        note=str(raw.get("note", "")),
    )
    if not (row.values or row.means or row.delta_m is not None):
        raise MtlError(f"{where}: no numbers")
    return row


@dataclass(frozen=True)
class Published:
    """What compare shows of the published tables: their rows (`show`) and/or Δm% against a published single-task row.

    `stl`: None for the runs' own single-task reference; "" for the first published table of the dataset that has a
    single-task row; a table key ("famo") for that table's."""

    tables: dict[str, list[PublishedTable]]
    show: bool = False
    stl: str | None = None

    def rows(self, dataset: str) -> list[tuple[PublishedTable, PublishedRow]]:
        """The rows compare adds to `dataset`'s methods table (none unless `show`)."""
        if not self.show:
            return []
        return [(table, row) for table in self.tables.get(dataset, []) for row in table.rows]

    def reference(self, dataset: str) -> tuple[PublishedTable, PublishedRow] | None:
        """The published single-task row Δm% is computed against, or None (runs' own, or none published)."""
        if self.stl is None:
            return None
        for table in self.tables.get(dataset, []):
            if (not self.stl or table.key == self.stl) and table.single_task is not None:
                return table, table.single_task
        return None


def parse_stl(text: str) -> str | None:
    """--stl: `runs` -> None, `published` -> "", `published:KEY` -> KEY; MtlError otherwise."""
    text = text.strip()
    if text == RUNS:
        return None
    if text == PUBLISHED:
        return ""
    if text.startswith(f"{PUBLISHED}:") and text[len(PUBLISHED) + 1 :]:
        return text[len(PUBLISHED) + 1 :]
    raise MtlError(f"--stl {text!r}: expected runs, published or published:TABLE", hint="e.g. --stl published:famo")


def published_view(datasets: Iterable[str], *, show: bool, stl: str | None) -> tuple[Published, list[str]]:
    """The published tables of `datasets` for compare, and a warning per dataset --stl published cannot serve.

    MtlError when --stl names a table that none of the datasets has."""
    datasets = sorted(set(datasets))
    tables = load_tables(datasets) if show or stl is not None else {}
    view = Published(tables, show=show, stl=stl)
    if stl is None:
        return view, []
    if stl and not any(t.key == stl for found in tables.values() for t in found):
        known = sorted({t.key for found in tables.values() for t in found if t.single_task is not None})
        raise MtlError(
            f"--stl published:{stl}: no published table {stl!r} for {', '.join(datasets)}",
            hint=f"choose one of: {', '.join(known)}" if known else "no published single-task numbers for these datasets",
        )
    warnings = [
        f"{dataset}: no published single-task numbers per metric{f' in table {stl!r}' if stl else ''}; no Δm% there"
        for dataset in datasets
        if view.reference(dataset) is None
    ]
    return view, warnings
