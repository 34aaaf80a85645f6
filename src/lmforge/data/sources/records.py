"""Turn one structured record (a dict of fields) into a Document.

Shared by the JSONL, CSV/TSV, Parquet, SQL and Hugging Face readers: the text comes from
`text_field` or from rendering `template` over the fields; the id and label fields are taken
as they are; every other field goes to `meta` next to the lineage, as JSON-able values.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import string
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed, derived_id
from lmforge.errors import InputDataError

LINEAGE_KEYS = ("source", "reader", "file", "table", "row", "offset")


def template_fields(template: str) -> list[str]:
    """Top-level field names a str.format template uses ("{a.b}" uses "a")."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputDataError(f"template {template!r} is not a valid format string: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not root or root.isdigit():
            raise InputDataError(
                f"template {template!r} has a positional field {{{name}}}; "
                "name the record field instead, e.g. '{comment}'"
            )
        if root not in names:
            names.append(root)
    return names


class _Blank(dict):
    """Format values: None renders as an empty string, not 'None'."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__({k: ("" if v is None else v) for k, v in fields.items()})


class RecordBuilder:
    """Builds documents from records of one file or table of one source."""

    def __init__(
        self,
        src: SourceConfig,
        source_name: str,
        where: str,
        rel_path: str,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.src = src
        self.source_name = source_name
        self.where = where
        self.rel_path = rel_path  # ids derived from it stay stable when the data moves
        self.used = set(template_fields(src.template)) if src.template else {src.text_field}
        self.built = 0
        if columns is not None:
            self._check_fields(columns)

    def _check_fields(self, columns: Sequence[str]) -> None:
        missing = [f for f in sorted(self.used) if f not in columns]
        if not missing:
            return
        shown = ", ".join(columns) or "(none)"
        if self.src.template:
            raise InputDataError(
                f"template field {missing[0]!r} is not a column of {self.where}; "
                f"available columns: {shown}"
            )
        raise InputDataError(
            f"{self.where} has no text field {missing[0]!r}; available columns: {shown}. "
            "Set `text_field` (or a `template`) in this data.sources entry"
        )

    def build(self, fields: Mapping[str, Any], lineage: dict[str, Any]) -> Document | Malformed:
        name = self.source_name
        if self.src.template:
            try:
                text = self.src.template.format_map(_Blank(fields))
            except (KeyError, AttributeError, IndexError) as exc:
                if self.built == 0:
                    self._check_fields(list(fields))
                    raise InputDataError(f"template failed on {self.where}: {exc}") from None
                return Malformed(f"template field missing: {exc}", _raw(fields), name, lineage)
            except ValueError as exc:
                if self.built == 0:
                    raise InputDataError(
                        f"template {self.src.template!r} failed on {self.where}: {exc}"
                    ) from None
                return Malformed(f"template error: {exc}", _raw(fields), name, lineage)
        else:
            value = fields.get(self.src.text_field)
            if value is None:
                return Malformed("no text field", _raw(fields), name, lineage)
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            if isinstance(value, (dict, list)):
                return Malformed("text field is not a string", _raw(fields), name, lineage)
            text = str(value)

        meta = dict(lineage)
        special = {self.src.id_field, self.src.label_field} | self.used
        for key, value in fields.items():
            if key in special:
                continue
            meta[f"{key}_field" if key in LINEAGE_KEYS else key] = _jsonable(value)

        raw_id = fields.get(self.src.id_field)
        if raw_id is None or raw_id == "":
            position = lineage.get("row", lineage.get("offset"))
            doc_id = derived_id(name, f"{self.rel_path}:{lineage.get('table', '')}", position)
        else:
            doc_id = str(raw_id)
        label = fields.get(self.src.label_field)
        content = None
        if self.src.template and self.src.text_field in self.used:
            value = fields.get(self.src.text_field)
            content = "" if value is None else str(value)
        self.built += 1
        return Document(
            id=doc_id,
            text=text,
            source=name,
            label=None if label is None or label == "" else str(label),
            meta=meta,
            content=content,
        )


def _raw(fields: Mapping[str, Any]) -> str:
    return json.dumps(dict(fields), ensure_ascii=False, default=str)


def _jsonable(value: Any) -> Any:
    """Meta values as JSON can hold them: nested Parquet/Arrow and SQL values (lists, structs,
    maps, bytes, dates, decimals) become lists, dicts, strings and numbers."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)  # exact, unlike a float
    return str(value)
