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
    ("small_cnn", "imagenet", "backbone=small_cnn has no ImageNet weights: pass weights=none (from scratch) or "
                              "weights=PATH"),
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
    # small_cnn: what is asserted is kerakit's two-phase bookkeeping and resume, the same for any backbone; the
    # default mobilenet_v3_small from scratch made this test 100 s, three quarters of it the backbone's epochs.
    quiet = dict(verbose=0, log=lambda m: None, backbone="small_cnn", weights="none", epochs=2, fine_tune_epochs=2,
                 patience=50)
    run = kerakit.train(recipe, tmp_path / "run", **quiet)
    assert run.config["hparams"]["backbone"] == "small_cnn"
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


# Proof of transfer without internet (no ImageNet download): sklearn's bundled 8x8 digits, upscaled to 32 x 32 RGB.
# The backbone learns digits 0-4 (plain Keras, saved as a weights file); kerakit's image recipe then learns 5-9 from
# a folder of 20 photos per class, once from those weights and once from scratch, with the same epochs and seed.
TRANSFER = dict(epochs=8, fine_tune_epochs=4, learning_rate=0.01, patience=100)
MARGIN = 0.15  # accuracy points on the 300 test photos; measured differences 0.27-0.34 (the test's docstring)


def _digit_photos(size=32):
    """The 1,797 digits as size x size RGB uint8 images (bilinear from 8 x 8, 0-16 -> 0-255) and their digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = (digits.images * (255 / 16)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(g, "L").resize((size, size), Image.BILINEAR).convert("RGB"))
                     for g in grey]), digits.target


def _pretrain(images, labels, path, seed, epochs=3):
    """mobilenet_v3_small from scratch on `images` (digits 0-4) in their four orientations: 20 classes, whose
    features carry over better than five upright ones (a logistic-regression probe of the pooled features on 20
    photos per class of 5-9, seed 0: 0.81-0.85 after 1-4 epochs, against 0.76 from five upright classes)."""
    import keras

    from kerakit.images import backbone

    keras.utils.set_random_seed(seed)
    x = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in range(4)]).astype(np.float32)
    y = np.concatenate([labels + 5 * k for k in range(4)])
    base = backbone("mobilenet_v3_small", images.shape[1], "none")
    inputs = keras.Input(images.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(20, activation="softmax")(base(inputs)))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    base.save_weights(path)
    return path


def _digit_folder(root, images, labels, train=20, val=10, test=60):
    """Digits 5-9 as PNG photos in train/, val/ and test/ folders (per class: 20, 10, 60), drawn in a fixed order."""
    from PIL import Image

    for digit in range(5, 10):
        chosen = np.random.default_rng(digit).permutation(np.flatnonzero(labels == digit))
        for split, rows in (("train", chosen[:train]), ("val", chosen[train:train + val]),
                            ("test", chosen[train + val:train + val + test])):
            (root / split / f"digit_{digit}").mkdir(parents=True)
            for i in rows:
                Image.fromarray(images[i]).save(root / split / f"digit_{digit}" / f"{i:04d}.png")
    return root


def transfer_accuracies(tmp_path, seed=0) -> dict:
    """Test accuracy of the image recipe on digits 5-9 from the weights pretrained on 0-4, and from scratch."""
    import kerakit
    from kerakit.sources import data_report
    from kerakit.sources.recipes import recipe_text

    images, labels = _digit_photos()
    weights = _pretrain(images[labels < 5], labels[labels < 5], tmp_path / "digits_0_4.weights.h5", seed)
    folder = _digit_folder(tmp_path / "data" / "digits", images, labels)
    recipe = tmp_path / "recipes" / "digits.py"
    recipe.parent.mkdir()
    recipe.write_text(recipe_text("digits", str(folder), data_report(folder)))
    quiet = dict(verbose=0, log=lambda m: None, seed=seed, **TRANSFER)
    return {start: kerakit.train(recipe, tmp_path / start, weights=w, **quiet).metrics["accuracy"]
            for start, w in (("pretrained", str(weights)), ("scratch", "none"))}


@pytest.mark.slow
def test_fine_tuning_saved_weights_beats_the_same_backbone_from_scratch(tmp_path, monkeypatch):
    """Transfer, provable offline: mobilenet_v3_small pretrained on digits 0-4 (saved as a weights file) and
    fine-tuned by the image recipe (weights=PATH) on 20 photos per class of 5-9 beats the same recipe with
    weights=none on the same folder, epochs and seed (TRANSFER: 8 + 4 epochs, learning_rate 0.01 for both).

    Measured with this code, seeds 0 / 1 / 2 (Intel Xeon, AVX-512/AMX, 2 vCPUs, load average 4-5): test accuracy
    (300 photos, 5 classes, chance 0.2) pretrained 0.617 / 0.653 / 0.583, from scratch 0.277 / 0.330 / 0.317:
    differences 0.34 / 0.32 / 0.27, so MARGIN is 0.15. 134-154 s each under that load (the pretraining about
    40 s of it). With 15 + 5 epochs at the recipe's defaults, from scratch reached 0.75 and weights pretrained on
    the five upright classes only 0.58 (seed 0, 746 test photos): transfer here needs the richer pretraining."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    accuracy = transfer_accuracies(tmp_path)
    assert accuracy["pretrained"] >= accuracy["scratch"] + MARGIN, accuracy
