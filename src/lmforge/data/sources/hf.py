"""Hugging Face datasets written with `save_to_disk`: a Dataset or every split of a
DatasetDict, one document per row.

`datasets` is an optional extra and is imported only when such a folder is read. Rows are
read in Arrow batches from the memory-mapped files, so a dataset larger than memory is
fine; class-label columns are turned back into their names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.records import RecordBuilder
from lmforge.errors import InputDataError

BATCH_ROWS = 1024
MARKERS = ("dataset_info.json", "dataset_dict.json")  # what save_to_disk leaves in the folder


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def import_datasets() -> ModuleType:
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise InputDataError(
            "reading a Hugging Face dataset folder needs the `datasets` package: "
            "pip install 'lmforge[hf]'"
        ) from None


def read_hf(path: Path, rel: str, src: SourceConfig, name: str) -> Iterator[Document | Malformed]:
    """Lineage `table` is the split name for a DatasetDict; `row` counts from 1 per split."""
    datasets = import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds for a damaged or foreign folder
        lineage = {"source": name, "reader": "hf", "file": str(path)}
        reason = f"unreadable dataset folder: {type(exc).__name__}: {exc}"
        yield Malformed(reason.splitlines()[0], "", name, lineage)
        return
    if isinstance(loaded, datasets.DatasetDict):
        splits: list[tuple[str | None, Any]] = list(loaded.items())
    else:
        splits = [(None, loaded)]
    for split, dataset in splits:
        yield from _read_split(dataset, split, path, rel, src, name, datasets)


def _read_split(
    dataset: Any,
    split: str | None,
    path: Path,
    rel: str,
    src: SourceConfig,
    name: str,
    datasets: ModuleType,
) -> Iterator[Document | Malformed]:
    where = f"{path} (split {split})" if split else str(path)
    builder = RecordBuilder(src, name, where=where, rel_path=rel, columns=dataset.column_names)
    label_names = _class_labels(dataset, src.label_field, datasets)
    row_no = 0
    # Arrow format: no per-feature decoding (images, audio) for rows that are only text.
    for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for fields in table.to_pylist():
            row_no += 1
            lineage: dict[str, Any] = {"source": name, "reader": "hf", "file": str(path)}
            if split is not None:
                lineage["table"] = split
            lineage["row"] = row_no
            if label_names is not None:
                fields[src.label_field] = _label_name(fields.get(src.label_field), label_names)
            yield builder.build(fields, lineage)


def _class_labels(dataset: Any, field: str, datasets: ModuleType) -> list[str] | None:
    feature = dataset.features.get(field)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _label_name(value: Any, names: list[str]) -> Any:
    # -1 is how datasets marks an unlabelled row.
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return None if value == -1 else value
