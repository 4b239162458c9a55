"""The input contract: geometry equal to torchvision's and timm's, the model card's snippet equal to
qexport's own input, its sources in their order, and one sentence for each contract that cannot work."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from qexport.training import contract
from qexport.core.errors import QExportError
from qexport.core.preprocessing import Preprocessing, crop_box, prepare, prepare_file, resized_size, snippet
from qexport.core.preprocessing_flags import PreprocessingFlags, parse_channels, parse_resize

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def photo(width: int, height: int, seed: int = 0):
    """A PIL image with real structure (gradients and noise), so resampling errors would show."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


def test_resize_keeps_the_aspect_and_truncates_the_longer_side_as_torchvision_does():
    p = Preprocessing(**IMAGENET, resize=256, crop=224)
    assert resized_size(500, 375, p) == (341, 256)   # 256 * 500 / 375 = 341.33 -> 341
    assert resized_size(375, 500, p) == (256, 341)
    assert resized_size(300, 299, p) == (256, 256)   # 256 * 300 / 299 = 256.86: truncated, never rounded up
    assert crop_box(341, 256, 224) == (58, 16, 282, 240)  # (341 - 224) / 2 = 58.5 -> round half to even: 58
    assert crop_box(343, 256, 224) == (60, 16, 284, 240)  # 59.5 -> 60


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (231, 233), (640, 480)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_qexport_prepares_exactly_what_torchvision_s_weights_transform_does(size, interpolation):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    reference = ImageClassification(crop_size=224, resize_size=232, interpolation=InterpolationMode(interpolation))
    image = photo(*size)
    ours = prepare(image, Preprocessing(**IMAGENET, resize=232, crop=224, interpolation=interpolation))
    assert ours.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(ours[0], reference(image).numpy(), atol=1e-5)


@pytest.mark.parametrize("p", [
    Preprocessing(**IMAGENET, resize=256, crop=224),
    Preprocessing(**IMAGENET, resize=248, crop=224, interpolation="bicubic"),
    Preprocessing(mean=[0.5] * 3, std=[0.25] * 3, resize=64, resize_mode="exact"),
    Preprocessing(mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4], resize=40, resize_mode="exact", crop=32),
])
def test_the_model_card_snippet_reproduces_qexport_s_input_with_pil_and_numpy_alone(p, tmp_path):
    image = photo(300, 200, seed=3)
    path = tmp_path / "image.jpg"
    image.save(path, quality=90)
    code = snippet(p).replace('"image.jpg"', repr(str(path)))
    assert "torch" not in code and "qexport" not in code
    scope: dict = {}
    exec(compile(code, "snippet", "exec"), scope)  # noqa: S102 - the text a deployment team would run
    expected = prepare_file(path.read_bytes(), p)
    assert scope["x"].dtype == np.float32 and scope["x"].shape == expected.shape
    np.testing.assert_array_equal(scope["x"], expected)


def test_normalisation_is_pixel_over_255_minus_mean_over_std():
    from PIL import Image

    image = Image.new("RGB", (4, 4), (255, 0, 51))  # 1.0, 0.0, 0.2 in [0, 1]
    p = Preprocessing(mean=[0.5, 0.25, 0.2], std=[0.5, 0.25, 0.1], resize=4, resize_mode="exact")
    x = prepare(image, p)
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, -1.0, 0.0], atol=1e-6)  # (1-0.5)/0.5, (0-0.25)/0.25, (0.2-0.2)/0.1


def test_qexport_s_tensor_path_and_the_numpy_path_give_the_same_input():
    from qexport.training.data import normalize
    from qexport.core.preprocessing import normalise

    pixels = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    np.testing.assert_array_equal(normalize(pixels, mean, std).numpy(), normalise(pixels.numpy(), mean, std))


@pytest.mark.parametrize("kwargs, says", [
    (dict(resize=224, crop=256), r"crop \(256 px\) is larger than the resize \(224 px\)"),
    (dict(mean=[0.5, 0.5], std=[0.5] * 3, resize=32, resize_mode="exact"), "one value per RGB channel"),
    (dict(std=[0.2, 0.0, 0.2], mean=[0.5] * 3, resize=32, resize_mode="exact"), "std of 0 would divide by zero"),
    (dict(resize=256), "add --crop"),
    (dict(resize=32, resize_mode="exact", interpolation="cubic"), "choose one of nearest, bilinear"),
])
def test_a_contract_that_cannot_work_is_one_sentence(kwargs, says):
    with pytest.raises(QExportError, match=says) as caught:
        Preprocessing(**{**IMAGENET, **kwargs})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("flags, says", [
    (dict(resize=224, crop=256), "larger than the resize"),
    (dict(std=(0.2, 0.0, 0.2)), "std of 0"),
])
def test_bad_flags_fail_before_any_data_is_read(flags, says):
    with pytest.raises(QExportError, match=says):
        PreprocessingFlags(**flags)


def test_flag_parsing():
    assert parse_resize("256") == (256, "shorter") and parse_resize("224x224") == (224, "exact")
    assert parse_channels("0.485,0.456,0.406", "--mean") == (0.485, 0.456, 0.406)
    with pytest.raises(QExportError, match="not square"):
        parse_resize("224x256")
    with pytest.raises(QExportError, match="one value per RGB channel"):
        parse_channels("0.5,0.5", "--mean")


# ----------------------------------------------------------------------------- where the contract comes from
def no_stats():
    raise AssertionError("statistics must not be computed when another source decides")


RECORD = Preprocessing(**IMAGENET, resize=256, crop=224, source="checkpoint")


def test_the_checkpoint_s_record_comes_first_and_flags_that_agree_with_it_change_nothing():
    assert contract.for_build(RECORD, "timm:resnet50", PreprocessingFlags(), no_stats, Path("c.pt")) is RECORD
    same = PreprocessingFlags(crop=224, resize=256)
    assert contract.for_build(RECORD, "resnet50", same, no_stats, Path("c.pt")) is RECORD


def test_flags_that_contradict_the_record_are_refused_naming_both_unless_forced():
    other = PreprocessingFlags(resize=232, crop=224)
    with pytest.raises(QExportError, match=r"records its preprocessing as 'resize shorter side to 256.*ask 'resize shorter side to 232"):
        contract.for_build(RECORD, "resnet50", other, no_stats, Path("c.pt"))
    forced = contract.for_build(RECORD, "resnet50", PreprocessingFlags(resize=232, crop=224, force=True), no_stats,
                                Path("c.pt"))
    assert forced.resize == 232 and "resize shorter side to 256" in forced.overridden


def test_a_bare_state_dict_without_a_source_is_refused_naming_the_flags():
    with pytest.raises(QExportError) as caught:
        contract.for_build(None, "resnet50", PreprocessingFlags(), no_stats, Path("mine.pt"))
    message = str(caught.value)
    assert "records no preprocessing" in message and "\n" not in message
    assert all(flag in message for flag in ("--mean", "--std", "--resize", "--crop", "--weights-transforms",
                                            "--stats-from-data"))


def test_flags_alone_need_mean_and_std():
    with pytest.raises(QExportError, match="give both --mean and --std"):
        contract.for_build(None, "resnet50", PreprocessingFlags(mean=(0.5, 0.5, 0.5)), no_stats, Path("c.pt"))
    chosen = contract.for_build(None, "resnet50", PreprocessingFlags(mean=(0.5,) * 3, std=(0.25,) * 3, resize=256,
                                                                     crop=224), no_stats, Path("c.pt"))
    assert (chosen.resize, chosen.crop, chosen.mean) == (256, 224, [0.5] * 3) and "--mean" in chosen.source


def test_stats_from_data_computes_them_and_says_so():
    chosen = contract.for_build(None, "resnet50", PreprocessingFlags(stats_from_data=True, resize=256, crop=224),
                                lambda: ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), Path("c.pt"))
    assert chosen.mean == [0.1, 0.2, 0.3] and chosen.std == [0.4, 0.5, 0.6] and "--stats-from-data" in chosen.source


def test_a_torchvision_weights_recipe_gives_its_own_transforms():
    chosen = contract.for_build(None, "resnet50", PreprocessingFlags(weights_transforms="IMAGENET1K_V2"), no_stats,
                                Path("c.pt"))
    assert (chosen.resize, chosen.crop, chosen.interpolation) == (232, 224, "bilinear")
    assert chosen.mean == IMAGENET["mean"] and "ResNet50_Weights.IMAGENET1K_V2" in chosen.source
    v1 = contract.weights_contract("resnet50", "IMAGENET1K_V1")
    assert (v1.resize, v1.crop) == (256, 224)
    with pytest.raises(QExportError, match="did you mean 'IMAGENET1K_V2'"):
        contract.weights_contract("resnet50", "IMAGENET1K_V3")


def test_a_timm_model_gets_timm_s_data_config_and_flags_refine_it():
    pytest.importorskip("timm")
    vit = contract.for_build(None, "timm:vit_tiny_patch16_224", PreprocessingFlags(), no_stats, Path("c.pt"))
    # crop_pct 0.9 at 224: floor(224 / 0.9) = 248; bicubic; mean and std 0.5
    assert (vit.resize, vit.crop, vit.interpolation, vit.mean, vit.std) == (248, 224, "bicubic", [0.5] * 3, [0.5] * 3)
    smaller = contract.for_build(None, "timm:vit_tiny_patch16_224", PreprocessingFlags(resize=200, crop=160), no_stats,
                                 Path("c.pt"))
    assert (smaller.resize, smaller.crop, smaller.mean) == (200, 160, [0.5] * 3)


def test_timm_s_eval_transform_and_qexport_s_agree_on_a_real_image():
    timm = pytest.importorskip("timm")
    import timm.data

    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("resnet50").to_dict())
    reference = timm.data.create_transform(**config)
    ours = contract.timm_contract("timm:resnet50")
    image = photo(400, 300, seed=5)
    np.testing.assert_allclose(prepare(image, ours)[0], reference(image).numpy(), atol=1e-5)


def test_a_checkpoint_from_before_the_record_keeps_its_squashing_resize():
    old = contract.recorded({"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "image_size": [64, 64]},
                            Path("old.pt"))
    assert (old.resize, old.resize_mode, old.crop, old.mean) == (64, "exact", None, [0.5] * 3)
    assert contract.recorded({}, Path("bare.pt")) is None


def test_prepare_file_reads_a_png_of_raw_pixels_exactly():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    x = prepare_file(buffer.getvalue(), Preprocessing(mean=[0.0] * 3, std=[1.0] * 3, resize=32, resize_mode="exact"))
    np.testing.assert_allclose(x[0].transpose(1, 2, 0) * 255, pixels, atol=1e-3)


def test_a_weights_recipe_that_matches_the_checkpoint_s_record_is_accepted():
    record = contract.weights_contract("resnet50", "IMAGENET1K_V2")
    flags = PreprocessingFlags(weights_transforms="IMAGENET1K_V2")
    assert contract.for_build(record, "resnet50", flags, no_stats, Path("c.pt")) is record
    with pytest.raises(QExportError, match="records its preprocessing as"):
        contract.for_build(RECORD, "resnet50", flags, no_stats, Path("c.pt"))  # 256/224 recorded, 232/224 asked


def test_whole_split_passes_hold_about_the_same_pixels_at_any_size():
    from qexport.core.preprocessing import PIXELS_PER_PASS, batch_for

    assert PIXELS_PER_PASS == 250 * 64 * 64
    assert batch_for(224, 250) == 20        # 1 024 000 // 50 176
    assert batch_for(64, 250) == 250 and batch_for(32, 250) == 250  # small images: the most asked for
    assert batch_for(96, 250) == 111       # 1 024 000 // 9 216
    assert batch_for(5000, 250) == 1       # never zero


def test_a_long_pass_says_how_far_it_is_at_most_every_fifteen_seconds():
    from qexport.training.images import PassReport

    now = [100.0]
    report = PassReport("scoring", 20_000, clock=lambda: now[0])
    now[0] = 110.0
    assert report.advance(2_000) is None  # 10 s in: too soon
    now[0] = 120.0
    # 4 000 of 20 000 done in 20 s: 200 images/s, 16 000 left -> 80 s
    assert report.advance(2_000) == "scoring: 4,000 of 20,000 images (20%), about 80 s left"
    now[0] = 130.0
    assert report.advance(2_000) is None  # 10 s after the last line
    now[0] = 200.0
    assert report.advance(14_000) is None  # done: the pass's end says nothing more


def test_an_image_over_pils_safety_limit_is_one_sentence_naming_it(tmp_path, monkeypatch):
    from PIL import Image

    from qexport.core.errors import QExportError
    from qexport.training.images import FileSource

    Image.new("RGB", (10, 10)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 100 pixels is over twice the limit: PIL refuses it
    with pytest.raises(QExportError, match=r"^Image .*huge\.png is too large to decode safely \(.*\); downscale or remove it\.$"):
        FileSource([tmp_path / "huge.png"]).image(0)


def test_a_checkpoint_trained_under_other_preprocessing_than_the_flags_is_not_reused(tiny_data, tmp_path, monkeypatch):
    from qexport.commands.pipeline import resolve_checkpoint, training_data
    from qexport.core.preprocessing_flags import PreprocessingFlags
    from qexport.training.recipe import TrainConfig

    monkeypatch.chdir(tmp_path)
    config = TrainConfig(epochs=1, batch_size=32, bn_recalibration_images=0)
    first = resolve_checkpoint("resnet18", tiny_data, None, config, show_progress=False)
    assert resolve_checkpoint("resnet18", tiny_data, None, config, show_progress=False) == first
    other = PreprocessingFlags(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.raises(QExportError, match=r"is not reused: it was trained under '.*', the flags ask '.*mean \[0\.5"):
        resolve_checkpoint("resnet18", tiny_data, None, config, show_progress=False, flags=other)
    retrained = resolve_checkpoint("resnet18", tiny_data, None, config, show_progress=False, flags=other, retrain=True)
    from qexport.training.models import read_checkpoint

    assert read_checkpoint(retrained)["meta"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
