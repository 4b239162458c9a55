"""A family's declaration is checked when it registers: a misnamed option would drop out of the
up-to-date check and let a stale artifact be reused, so it fails at import in one sentence."""

from __future__ import annotations

import pytest

from qexport.exporter.registry import (BUDGET_OPTIONS, FAMILIES, FINE_TUNE_OPTIONS, BuildOptions, register)


def declare(key: str, **spec) -> None:
    """Register a throwaway family; one whose declaration passes is removed again at once."""
    base = dict(variant="x", format="onnx", extension=".onnx", precision="int8", runtime="onnxruntime", method="m")
    register(key, **{**base, **spec})(lambda ctx, path: None)
    FAMILIES.pop(key)


def test_an_option_buildoptions_lacks_fails_at_registration_naming_it():
    with pytest.raises(ValueError) as err:
        declare("test-typo", option_keys=("calibraton_samples", "seed"))
    message = str(err.value)
    assert message.startswith("family 'test-typo' declares option 'calibraton_samples', which BuildOptions does "
                              "not have; choose from calibration_samples, ")
    assert message.count(".") == 1 and message.endswith(".")  # one sentence
    assert "test-typo" not in FAMILIES


def test_options_implied_by_the_declaration_are_not_declared_twice():
    with pytest.raises(ValueError, match="'qat_epochs', which it reads by declaring fine_tuned=True"):
        declare("test-qat", option_keys=("qat_epochs",), fine_tuned=True)


def test_an_unknown_precision_fails_at_registration():
    with pytest.raises(ValueError, match="family 'test-int4' declares precision 'int4'; choose from fp32, "):
        declare("test-int4", precision="int4")


def test_a_key_registered_twice_fails():
    with pytest.raises(ValueError, match="family 'onnx-int8' is registered twice"):
        declare("onnx-int8")


def test_every_registered_family_reads_only_buildoptions_fields():
    names = {name for name in BuildOptions.__dataclass_fields__}
    for family in FAMILIES.values():
        assert set(family.read_options) <= names, family.key


def test_the_up_to_date_check_reads_the_declaration():
    options = BuildOptions(qat_epochs=3)
    qat, static, fp32 = FAMILIES["torchscript-int8-qat"], FAMILIES["torchscript-int8-static"], FAMILIES["onnx-fp32"]
    assert qat.fine_tuned and not static.fine_tuned
    assert set(FINE_TUNE_OPTIONS) | set(BUDGET_OPTIONS) <= set(qat.relevant_options(options))
    assert qat.relevant_options(options)["qat_epochs"] == 3
    assert not set(FINE_TUNE_OPTIONS) & set(static.relevant_options(options))
    assert set(fp32.relevant_options(options)) == {"eval_samples", "golden_samples"}


def test_a_raised_recipe_enters_the_up_to_date_check_and_recipe_one_adds_nothing():
    options = BuildOptions()
    first, raised = FAMILIES["onnx-fp32"], FAMILIES["pt2e-int8"]
    assert (first.recipe, raised.recipe) == (1, 2)
    assert "recipe" not in first.relevant_options(options)  # manifests from before recipes stay up to date
    assert raised.relevant_options(options)["recipe"] == 2


def test_a_recipe_below_one_fails_at_registration():
    with pytest.raises(ValueError, match="family 'test-recipe' declares recipe 0; recipes count from 1"):
        declare("test-recipe", recipe=0)
