"""Every patch of torch's and torchao's internals (exporter/patches.py) still has something to patch.

A patch of a private attribute that a library upgrade moved or reshaped would otherwise fail
silently (the pre-pack patch yields False and the build goes on without it) or break a build far
from its cause. Each declared target must resolve in the installed library with the parameters
the patch was written against, and the installed version must be one the patch declares.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from qexport.exporter.patches import PATCHES, Patch, target_problem


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.name)
def test_every_target_of_a_patch_resolves_in_the_installed_library(patch: Patch):
    assert patch.targets and patch.why
    problems = [problem for problem in map(target_problem, patch.targets) if problem]
    assert not problems, f"{patch.name} ({patch.applies_to}): {'; '.join(problems)}"


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.name)
def test_the_installed_library_is_a_version_the_patch_was_checked_against(patch: Patch):
    """A pin moved past ``applies_to``: re-check the patch against the new version's source, then widen it."""
    wanted = Requirement(patch.applies_to)
    installed = version(wanted.name)
    assert wanted.specifier.contains(installed, prereleases=True), (
        f"{patch.name} was written against {patch.applies_to}; {wanted.name} {installed} is installed")


def test_a_moved_or_reshaped_target_is_reported():
    assert target_problem("torch.nn:Conv2d.forward(self, input)") is None
    assert "does not resolve" in target_problem("torch.nn:NoSuchModule")
    assert "now takes (self, input)" in target_problem("torch.nn:Conv2d.forward(self, x)")


def test_each_patch_is_undone_when_its_block_ends():
    from torch._inductor.fx_passes import mkldnn_fusion
    from torchao.quantization.pt2e import qat_utils

    for patch in PATCHES:
        before = {name: getattr(module, name) for module in (mkldnn_fusion, qat_utils) for name in dir(module)}
        with patch.apply():
            pass
        after = {name: getattr(module, name) for module in (mkldnn_fusion, qat_utils) for name in dir(module)}
        assert after == before, patch.name
