"""Property-based tests: manifest parsing refuses anything that is not a manifest it understands,
always in one sentence (a QExportError), never with a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import QExportError
from qexport.manifest import REQUIRED_FIELDS, SCHEMA, SCHEMA_VERSION, read_manifest, validate

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=15)


def minimal_manifest(file_name: str = "resnet18.fp32.onnx") -> dict:
    manifest = {key: {} for key in REQUIRED_FIELDS}
    manifest.update(schema=SCHEMA, schema_version=SCHEMA_VERSION, artifact={"file": file_name})
    return manifest


def assert_one_sentence(err: QExportError) -> None:
    assert str(err) and "\n" not in str(err) and "Traceback" not in str(err)


@given(JSON)
def test_arbitrary_json_is_refused_in_one_sentence(value):
    with pytest.raises(QExportError) as caught:
        validate(value)
    assert_one_sentence(caught.value)


@given(st.sampled_from(sorted(REQUIRED_FIELDS)), JSON)
def test_missing_field_or_wrong_version_is_named(field, version):
    manifest = minimal_manifest()
    del manifest[field]
    with pytest.raises(QExportError, match=field.replace("_", "[ _]")):  # "schema version None" counts
        validate(manifest)
    if version != SCHEMA_VERSION:
        with pytest.raises(QExportError, match="schema version"):
            validate({**minimal_manifest(), "schema_version": version})


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
    assert read_manifest(path)["artifact"]["file"] == "resnet18.fp32.onnx"
