"""The "Adding a family" walk-through of docs/ARCHITECTURE.md, run: a family declared in a
tests-only module registers, builds, is measured in its runtime and written with a manifest whose
up-to-date key is its own config."""

from __future__ import annotations

import pytest

from qexport.exporter import FAMILIES
from qexport.exporter.build import BuildStatus, build_families
from tests.conftest import make_context


@pytest.fixture
def toy_family():
    """The toy registered for one test, then removed, so that no other test builds or lists it
    (a module imported before is reloaded: importing it again would not run ``register``)."""
    import importlib
    import sys

    if "tests.toy_family" in sys.modules:
        importlib.reload(sys.modules["tests.toy_family"])
    else:
        importlib.import_module("tests.toy_family")
    yield FAMILIES["toy-fp32"]
    FAMILIES.pop("toy-fp32", None)


def test_a_family_from_outside_qexport_builds_with_its_own_config(tiny_data, tiny_checkpoint, tmp_path, toy_family,
                                                                  monkeypatch):
    import qexport.exporter.build as build

    servers = []
    monkeypatch.setattr(build, "prepare_fork_server", lambda: servers.append("started"))
    [outcome] = build_families(make_context(tiny_data, tiny_checkpoint), [toy_family], tmp_path)
    assert outcome.status is BuildStatus.BUILT, outcome.reason
    manifest = outcome.manifest
    assert manifest.build.options["config"] == {"temperature": 2.0}
    # Dividing logits by a positive temperature changes no prediction: the file agrees with eager.
    assert manifest.evaluation.top1_agreement_with_eager == 1.0
    assert manifest.evaluation.top1 == manifest.evaluation.fp32_reference_top1
    # A family this host cannot build (a GPU family on a CPU host) is skipped without a child process.
    unbuildable = [f for f in FAMILIES.values() if f.isolate and f.build_problem()][:1]
    [again, *skipped] = build_families(make_context(tiny_data, tiny_checkpoint), [toy_family, *unbuildable], tmp_path)
    assert again.status is BuildStatus.UP_TO_DATE
    assert all(outcome.status is BuildStatus.SKIPPED for outcome in skipped)
    # Only the first call had a file to build in a child process; the second started no fork server.
    assert servers == ["started"]
