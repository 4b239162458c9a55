"""A family's declaration is checked when it registers, and its typed config is its up-to-date
key: a config missing a section its kind reads, or an unknown runtime, fails at import in one
sentence, and a changed option -- the family's own or a shared one such as --seed -- changes the key."""

from __future__ import annotations

import pytest

from qexport.core.options import BudgetConfig, BuildOptions, FamilyConfig, QatConfig, TargetConfig
from qexport.exporter.registry import FAMILIES, register


def declare(key: str, **spec) -> None:
    """Register a throwaway family; one whose declaration passes is removed again at once."""
    base = dict(variant="x", format="onnx", extension=".onnx", precision="int8", runtime="onnxruntime", method="m",
                config=BudgetConfig)
    register(key, **{**base, **spec})(lambda ctx, config, path: None)
    FAMILIES.pop(key)


def test_an_int8_family_whose_config_lacks_the_budget_fails_naming_it():
    with pytest.raises(ValueError) as err:
        declare("test-int8", config=QatConfig)
    assert str(err.value) == "family 'test-int8' is int8, so its config must include BudgetConfig."
    assert "test-int8" not in FAMILIES


def test_a_compiled_family_whose_config_lacks_the_target_fails():
    with pytest.raises(ValueError, match="^family 'test-aoti' is compiled, so its config must include TargetConfig.$"):
        declare("test-aoti", precision="fp32", config=FamilyConfig, compiled=True)


def test_an_unknown_runtime_fails_at_registration_naming_family_and_runtime():
    with pytest.raises(ValueError, match="^family 'test-rt' declares runtime 'onnxruntim', which is not declared; "
                                         "choose from .*onnxruntime"):
        declare("test-rt", runtime="onnxruntim")


def test_a_config_that_is_not_a_family_config_fails():
    with pytest.raises(ValueError, match="declares config <class 'dict'>; declare a frozen dataclass"):
        declare("test-dict", precision="fp32", config=dict)


def test_an_unknown_precision_fails_at_registration():
    with pytest.raises(ValueError, match="family 'test-int4' declares precision 'int4'; choose from fp32, "):
        declare("test-int4", precision="int4")


def test_a_key_registered_twice_fails():
    with pytest.raises(ValueError, match="family 'onnx-int8' is registered twice"):
        declare("onnx-int8")


def test_a_recipe_below_one_fails_at_registration():
    with pytest.raises(ValueError, match="family 'test-recipe' declares recipe 0; recipes count from 1"):
        declare("test-recipe", recipe=0)


SHARED_DEFAULTS = {"seed": 0, "eval_samples": None, "golden_samples": 8, "calibration_samples": 512}


def test_the_key_is_the_shared_config_the_family_config_and_the_recipe():
    options = BuildOptions(seed=3, calibration_method="entropy", qat_epochs=5, max_accuracy_drop=2.5)
    assert FAMILIES["onnx-int8"].up_to_date_key(options) == {
        "shared": {**SHARED_DEFAULTS, "seed": 3},
        "config": {"calibration_method": "entropy", "target_cpu": "avx2", "max_accuracy_drop": 2.5,
                   "budget_samples": 5000, "budget_verdict": "interval"},
        "recipe": 2}  # onnx-int8 raised its recipe when -inf padding began to stay float
    qat = FAMILIES["torchscript-int8-qat"].up_to_date_key(options)["config"]
    assert (qat["qat_epochs"], qat["max_accuracy_drop"]) == (5, 2.5) and "calibration_method" not in qat
    assert FAMILIES["onnx-fp32"].up_to_date_key(options)["config"] == {}


def test_a_changed_seed_or_evaluation_subset_changes_every_familys_key():
    for family in FAMILIES.values():
        key = family.up_to_date_key(BuildOptions(eval_samples=100))
        assert family.up_to_date_key(BuildOptions(eval_samples=100, seed=1)) != key, family.key
        assert family.up_to_date_key(BuildOptions(eval_samples=200)) != key, family.key


def test_each_family_receives_its_own_config_type_filled_from_the_answers():
    options = BuildOptions(target_cpu="avx2", qat_epochs=4)
    config = FAMILIES["pt2e-int8-qat"].config_of(options)
    assert isinstance(config, TargetConfig) and isinstance(config, QatConfig) and isinstance(config, BudgetConfig)
    assert (config.qat_epochs, config.target_cpu) == (4, "avx2")
    assert FAMILIES["pt2e-int8-qat"].fine_tuned and not FAMILIES["pt2e-int8"].fine_tuned
    assert FAMILIES["executorch-int8"].fixed_batch and not FAMILIES["onnx-int8"].fixed_batch


def test_an_unknown_build_option_is_one_sentence():
    from qexport.core.errors import QExportError

    with pytest.raises(QExportError, match="^Unknown build option 'sead'; choose from budget_samples, "):
        BuildOptions(sead=1)
