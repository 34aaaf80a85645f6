"""Hugging Face datasets saved with save_to_disk (skipped when `datasets` is missing)."""

import sys

import pytest

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader, kind_for
from lmforge.errors import InputDataError


def read(path, **kw) -> list[Document | Malformed]:
    return list(SourceReader(SourceConfig(path=str(path), **kw)))


@pytest.fixture
def datasets():
    return pytest.importorskip("datasets")


def save(ds, path):
    ds.save_to_disk(str(path))
    return path


def test_saved_dataset_folder_is_detected_and_read_row_by_row(tmp_path, datasets):
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "tags": datasets.Sequence(datasets.Value("string")),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "text": ["great kettle", "loud fan", "no label"],
            "label": [1, 0, -1],
            "tags": [["a"], [], ["b", "c"]],
        },
        features=features,
    )
    path = save(ds, tmp_path / "imdb_small")
    assert kind_for(path) == "hf"
    docs = read(path)
    assert [d.text for d in docs] == ["great kettle", "loud fan", "no label"]
    assert [d.label for d in docs] == ["positive", "negative", None]  # class names, not ints
    assert docs[0].source == "imdb_small"
    assert docs[0].meta == {
        "source": "imdb_small",
        "reader": "hf",
        "file": str(path),
        "row": 1,
        "tags": ["a"],
    }
    assert len({d.id for d in docs}) == 3


def test_dataset_dict_reads_every_split_with_the_split_as_table(tmp_path, datasets):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"review": ["t1", "t2"], "id": ["a", "b"]}),
            "test": datasets.Dataset.from_dict({"review": ["s1"], "id": ["c"]}),
        }
    )
    path = save(dd, tmp_path / "reviews")
    docs = read(path, text_field="review")
    assert [(d.meta["table"], d.meta["row"], d.id, d.text) for d in docs] == [
        ("train", 1, "a", "t1"),
        ("train", 2, "b", "t2"),
        ("test", 1, "c", "s1"),
    ]


def test_saved_dataset_inside_a_folder_is_one_source_part(tmp_path, datasets):
    save(datasets.Dataset.from_dict({"text": ["from hf"]}), tmp_path / "mix" / "hf_part")
    (tmp_path / "mix" / "notes.txt").write_text("a text file", encoding="utf-8")
    reader = SourceReader(SourceConfig(path=str(tmp_path / "mix")))
    docs = list(reader)
    # the dataset's own state.json / dataset_info.json are not read as JSONL records
    assert [(d.text, d.meta["reader"]) for d in docs] == [
        ("from hf", "hf"),
        ("a text file", "text"),
    ]
    assert reader.skipped == []


def test_text_field_missing_in_a_dataset_names_the_columns(tmp_path, datasets):
    path = save(datasets.Dataset.from_dict({"body": ["x"]}), tmp_path / "d")
    with pytest.raises(InputDataError, match=r"no text field 'text'; available columns: body"):
        read(path)


def test_missing_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(InputDataError, match=r"pip install 'lmforge\[hf\]'"):
        SourceReader(SourceConfig(path=str(folder)))


def test_damaged_dataset_folder_is_malformed_not_a_crash(tmp_path, datasets):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{not json")
    (record,) = read(folder)
    assert isinstance(record, Malformed) and record.reason.startswith("unreadable dataset folder")


def test_kind_hf_and_a_dataset_folder_must_match(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    with pytest.raises(InputDataError, match=r"read it with kind hf \(or auto\), not 'jsonl'"):
        SourceReader(SourceConfig(path=str(folder), kind="jsonl"))
    file = tmp_path / "a.jsonl"
    file.write_text('{"text": "x"}\n')
    with pytest.raises(InputDataError, match=r"kind 'hf' reads a folder .* is a file"):
        SourceReader(SourceConfig(path=str(file), kind="hf"))
