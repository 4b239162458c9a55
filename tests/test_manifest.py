"""Property-based tests: manifest parsing refuses anything that is not a manifest it understands,
always in one sentence (a QExportError), never with a crash."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.core.documents import parse, to_json
from qexport.core.errors import QExportError
from qexport.core.artifact_files import read_manifest
from qexport.core.manifest import Manifest, READABLE_SCHEMA_VERSIONS
from tests.conftest import minimal_manifest

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=15)
REQUIRED_FIELDS = sorted(f.name for f in dataclasses.fields(Manifest)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def validate(data):
    return Manifest.from_dict(data, "m.manifest.json")


def assert_one_sentence(err: QExportError) -> None:
    assert str(err) and "\n" not in str(err) and "Traceback" not in str(err)


@given(JSON)
def test_arbitrary_json_is_refused_in_one_sentence(value):
    with pytest.raises(QExportError) as caught:
        validate(value)
    assert_one_sentence(caught.value)


@given(st.sampled_from(REQUIRED_FIELDS), JSON)
def test_missing_field_or_wrong_version_is_named(field, version):
    manifest = minimal_manifest()
    del manifest[field]
    with pytest.raises(QExportError, match=f"required field '{field}'"):
        validate(manifest)
    if version not in READABLE_SCHEMA_VERSIONS:
        with pytest.raises(QExportError, match="schema version"):
            validate({**minimal_manifest(), "schema_version": version})


@given(st.sampled_from(REQUIRED_FIELDS), JSON)
def test_a_field_of_the_wrong_type_is_named_in_one_sentence(field, value):
    manifest = {**minimal_manifest(), field: value}
    try:
        validate(manifest)
    except QExportError as err:
        assert_one_sentence(err)
        assert field in str(err) or "file" in str(err)
        return
    original = minimal_manifest()[field]  # accepted: a value of the declared kind (a section is an object)
    assert type(value) is type(original) or (isinstance(value, dict) and isinstance(original, dict))


def test_nested_type_errors_name_the_field():
    manifest = minimal_manifest()
    manifest["evaluation"]["top1"] = "high"
    with pytest.raises(QExportError, match="'evaluation.top1' should be a number"):
        validate(manifest)


@given(st.text(max_size=40))
def test_artifact_file_is_only_ever_a_plain_name(name):
    manifest = minimal_manifest(name)
    try:
        validate(manifest)
    except QExportError as err:
        assert_one_sentence(err)
        return
    assert name and Path(name).name == name and "/" not in name  # accepted: cannot leave the folder


@settings(max_examples=50)
@given(st.binary(max_size=300))
def test_reading_arbitrary_bytes_never_crashes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.manifest.json"
        path.write_bytes(data)
        with pytest.raises(QExportError) as caught:
            read_manifest(path)
    assert_one_sentence(caught.value)


def test_a_valid_minimal_manifest_round_trips(tmp_path):
    path = tmp_path / "m.manifest.json"
    path.write_text(json.dumps(minimal_manifest()))
    manifest = read_manifest(path)
    assert manifest.artifact.file == "resnet18.fp32.onnx"
    assert manifest.to_dict() == minimal_manifest()


def test_a_mistyped_optional_key_is_refused_naming_it_and_the_file():
    manifest = minimal_manifest()
    manifest["evaluation"]["devcie"] = "cpu"
    with pytest.raises(QExportError) as caught:
        validate(manifest)
    assert str(caught.value).startswith("m.manifest.json: field 'evaluation.devcie' is not one this qexport knows")
    assert_one_sentence(caught.value)


def test_a_version_1_manifest_is_read_under_the_renamed_fields():
    """Version 1 called the agreement with the eager model top1_agreement_with_fp32."""
    manifest = minimal_manifest(schema_version=1)
    del manifest["evaluation"]["top1_agreement_with_eager"]
    manifest["evaluation"]["top1_agreement_with_fp32"] = 0.97
    assert validate(manifest).evaluation.top1_agreement_with_eager == 0.97


def test_a_field_under_both_its_names_is_refused():
    manifest = minimal_manifest()
    manifest["evaluation"]["top1_agreement_with_fp32"] = 0.5
    with pytest.raises(QExportError, match="gives field 'evaluation.top1_agreement_with_eager' twice"):
        validate(manifest)


@dataclasses.dataclass
class PerBatch:
    """A document keyed by batch size, as bench results are."""

    p50_ms: dict[int, float]


def test_a_mapping_keyed_by_whole_numbers_comes_back_with_number_keys():
    written = to_json(PerBatch(p50_ms={1: 0.5, 32: 4.0}))
    read = parse(PerBatch, json.loads(json.dumps(written)), "bench.json")
    assert read.p50_ms == {1: 0.5, 32: 4.0} and all(isinstance(key, int) for key in read.p50_ms)


def test_a_key_that_is_not_a_whole_number_is_named():
    with pytest.raises(QExportError) as caught:
        parse(PerBatch, {"p50_ms": {"1": 0.5, "thirty-two": 4.0}}, "bench.json")
    assert str(caught.value).startswith("bench.json: key 'p50_ms.thirty-two' should be a whole number")
    assert_one_sentence(caught.value)


def test_a_manifest_the_index_does_not_list_is_left_out_by_name(tmp_path, capsys):
    """bench, verify and pack take the folder's index; one copied in after the build is named, not dropped silently."""
    from qexport.core.index import Index, IndexEntry, discover

    for name in ("resnet18.fp32.onnx", "resnet18.int8.onnx"):
        (tmp_path / f"{name}.manifest.json").write_text(json.dumps(minimal_manifest(name)))
    listed = tmp_path / "resnet18.fp32.onnx.manifest.json"
    index = Index(model="resnet18", created="now", artifacts=[IndexEntry.of(listed, read_manifest(listed))])
    (tmp_path / "index.json").write_text(json.dumps(index.to_dict()))
    assert [path.name for path, _ in discover(tmp_path)] == [listed.name]
    said = " ".join(capsys.readouterr().err.split())
    assert "does not list 1 manifest(s) in the folder (resnet18.int8.onnx.manifest.json)" in said
    assert "resnet18.fp32.onnx.manifest.json" not in said
    (tmp_path / "index.json").unlink()
    assert len(discover(tmp_path)) == 2 and capsys.readouterr().err == ""


def test_the_file_formats_keep_their_names_wherever_the_code_lives():
    """A manifest and an index name their format in the file; moving the code that reads them must
    not rename it, or every file written before is refused."""
    from qexport.core.index import INDEX_SCHEMA
    from qexport.core.manifest import SCHEMA

    assert (SCHEMA, INDEX_SCHEMA) == ("qexport.manifest", "qexport.index")
