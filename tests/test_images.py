"""A folder of photos to a transfer-learning model that takes raw uint8 pixels (issue 26): the recipe
`kerakit new` writes, its backbone and weights overrides, the one resizing rule, and two training phases."""

import json

import numpy as np
import pytest

from kerakit.errors import KerakitError


def _recipe(tmp_path, per_class=30):
    from messy_files import photos

    from kerakit.sources import data_report
    from kerakit.sources.recipes import recipe_text

    folder = photos(tmp_path / "data" / "photos", per_class=per_class)
    path = tmp_path / "recipes" / "shapes.py"
    path.parent.mkdir()
    path.write_text(recipe_text("shapes", str(folder), data_report(folder)))
    return path


def test_the_image_recipe_takes_raw_uint8_pixels_and_names_its_backbone_and_weights(tmp_path):
    from kerakit.recipe import load_recipe

    recipe = load_recipe(_recipe(tmp_path))
    assert [(i.name, i.shape, i.dtype) for i in recipe.inputs] == [("image", (64, 64, 3), "uint8")]
    assert recipe.defaults["weights"] == "imagenet" and recipe.defaults["fine_tune_epochs"] > 0
    assert recipe.fine_tune is not None
    text = recipe.path.read_text()
    assert 'hp.Choice("backbone", list(BACKBONES), default="mobilenet_v3_small")' in text
    assert "training=False if pretrained else None" in text  # BatchNormalization in inference mode
    assert 'FIT = "letterbox"' in text and "fit_image(example[\"image\"], SIZE, FIT)" in text  # serve reads FIT


def test_fit_image_letterboxes_any_photo_to_the_model_size_as_uint8():
    from kerakit.images import fit_image

    wide = np.full((20, 40, 3), 200, np.uint8)
    fitted = fit_image(wide, 32).numpy()
    assert fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8
    assert (fitted[:8] == 0).all() and (fitted[-8:] == 0).all()  # padded with black, top and bottom
    assert (fitted[9:23] == 200).all()  # nothing cropped, values kept


def test_fit_image_crop_fills_the_frame_and_keeps_the_centre():
    from kerakit.images import fit_image

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 8:32] = 200  # the centre; the sides are black
    fitted = fit_image(wide, (32, 32), "crop").numpy()
    assert fitted.shape == (32, 32, 3) and (fitted == 200).all()  # scaled to 32 x 64, the centre 32 columns kept
    with pytest.raises(KerakitError, match="Unknown fit='stretch': expected one of letterbox, crop"):
        fit_image(wide, 32, "stretch")


@pytest.mark.parametrize("name, weights, message", [
    ("resnet9", "none", "Unknown backbone='resnet9': expected one of mobilenet_v3_small, mobilenet_v3_large, "
                        "mobilenet_v2, efficientnet_b0, efficientnet_v2_b0"),
    ("mobilenet_v3_small", "weights/missing.h5", "weights='weights/missing.h5' is neither 'imagenet', 'none' nor "
                                                 "an existing file. Expected weights=imagenet"),
])
def test_a_bad_backbone_or_weights_is_one_line_naming_what_is_allowed(name, weights, message):
    from kerakit.images import backbone

    with pytest.raises(KerakitError) as caught:
        backbone(name, 32, weights)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_weights_from_a_file_of_another_backbone_are_refused_in_one_line(tmp_path):
    from kerakit.images import backbone

    backbone("mobilenet_v3_small", 32, "none").save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(KerakitError, match=r"does not fit backbone=mobilenet_v2: .*Expected weights=imagenet") as caught:
        backbone("mobilenet_v2", 32, str(tmp_path / "small.weights.h5"))
    assert "\n" not in str(caught.value)
    loaded = backbone("mobilenet_v3_small", 32, str(tmp_path / "small.weights.h5"))
    assert loaded.count_params() > 0


def test_weights_imagenet_downloads_or_says_offline_what_to_pass_instead(tmp_path, monkeypatch):
    """Offline (as here), one line before any training; with internet, the ImageNet weights load."""
    from kerakit.images import backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached copy
    try:
        model = backbone("mobilenet_v3_small", 32, "imagenet")
    except KerakitError as e:
        assert str(e).startswith("weights=imagenet: cannot download the ImageNet weights of "
                                 "backbone=mobilenet_v3_small (offline?")
        assert "Pass weights=PATH" in str(e) and "or weights=none to train from scratch" in str(e)
        return
    assert model.count_params() > 0


@pytest.mark.slow
def test_two_phases_run_in_one_history_and_an_interrupted_second_phase_resumes(tmp_path, monkeypatch):
    """Head on a frozen backbone, then fine-tuning: both in history.csv, the switch in the manifest; a run
    killed in the second phase resumes in it (fine_tune applied again before its backup is restored)."""
    import kerakit
    from kerakit.callbacks import Backup

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    recipe = _recipe(tmp_path, per_class=20)
    quiet = dict(verbose=0, log=lambda m: None, weights="none", epochs=2, fine_tune_epochs=2, patience=50)
    run = kerakit.train(recipe, tmp_path / "run", **quiet)
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["training"]["fine_tune_from_epoch"] == 2 and manifest["training"]["epochs_run"] == 4
    assert [int(r["epoch"]) for r in kerakit.train.__globals__["_read_history"](run.history_path)] == [0, 1, 2, 3]

    real = Backup.on_epoch_end
    calls = []

    def killed_in_phase_two(self, epoch, logs=None):
        real(self, epoch, logs)
        calls.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt  # after the first fine-tuning epoch's backup
    monkeypatch.setattr(Backup, "on_epoch_end", killed_in_phase_two)
    with pytest.raises(KeyboardInterrupt):
        kerakit.train(recipe, tmp_path / "again", **quiet)
    monkeypatch.setattr(Backup, "on_epoch_end", real)
    logs = []
    again = kerakit.train(recipe, tmp_path / "again", **{**quiet, "log": logs.append})
    assert any("Resuming shapes from epoch 3" in line for line in logs)
    assert not any("Fine-tuning" in line for line in logs)  # resumed inside phase two, not switched again
    assert json.loads((again.path / "manifest.json").read_text())["training"]["fine_tune_from_epoch"] == 2
