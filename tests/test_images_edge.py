"""A photo folder's model on the edge (issue 26): its TFLite files describe themselves in LiteRT's metadata schema
(labels, input size, value range) that MediaPipe Tasks reads and runs, and the edge target's int8 file is verified
on held-out photos with its size and batch-1 latency in the report, held to a target's [budget]."""

import io
import zipfile

import numpy as np
import pytest

EDGE_INT8 = '''[[artifacts]]
format = "tflite"
quantization = "int8"
io = "float32"
'''


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """backbone=small_cnn from scratch on a generated folder of 2 x 60 messy photos (every format and mode, junk
    files): a run of a few epochs, as `kerakit new` + `kerakit train` make it."""
    from messy_files import photos

    import kerakit
    from kerakit.sources import data_report
    from kerakit.sources.recipes import recipe_text

    root = tmp_path_factory.mktemp("photos")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", str(root / "tfds"))
        folder = photos(root / "data" / "photos", per_class=60)
        recipe = root / "recipes" / "shapes.py"
        recipe.parent.mkdir()
        recipe.write_text(recipe_text("shapes", str(folder), data_report(folder)))
        run = kerakit.train(recipe, root / "run", verbose=0, log=lambda m: None, weights="none",
                            backbone="small_cnn", learning_rate=0.003, epochs=6, fine_tune_epochs=2, patience=50)
        yield run, root


def _export(photo_run, out, targets, formats=()):
    from kerakit.export import export

    run, root = photo_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", str(root / "tfds"))
        return export(run.path, targets=targets, formats=formats, out=out, log=lambda m: None)


def _standard_metadata(path):
    """The ModelMetadata under TFLITE_METADATA, read with the generated code of LiteRT's metadata schema as MediaPipe
    ships it (metadata_schema.fbs), and the model flatbuffer read by TensorFlow's own schema."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    [entry] = [e for e in model.metadata if e.name == b"TFLITE_METADATA"]
    data = bytes(model.buffers[entry.buffer].data)
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)  # "M001"
    return schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0)), schema


def test_tflite_files_say_labels_input_size_and_pixel_range_in_litert_metadata_that_mediapipe_runs(photo_run,
                                                                                                  tmp_path):
    from mediapipe import Image, ImageFormat
    from mediapipe.tasks.python import BaseOptions, vision

    from kerakit import runtime

    report = _export(photo_run, tmp_path, [], formats=["tflite", "tflite-int8", "tflite-fp16"])
    assert [r.verdict for r in report.artifacts] == ["verified"] * 3  # the metadata changes no output
    photos = np.stack([np.asarray(p) for p in _test_photos(photo_run)])
    for row in report.artifacts:
        meta, schema = _standard_metadata(row.path)
        assert meta.name == b"shapes" and meta.minParserVersion == b"1.0.0"
        [graph] = meta.subgraphMetadata
        [image], [scores] = graph.inputTensorMetadata, graph.outputTensorMetadata
        assert image.name == b"image" and image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
        properties = image.content.contentProperties
        assert properties.colorSpace == schema.ColorSpaceType.RGB
        assert (properties.defaultSize.width, properties.defaultSize.height) == (64, 64)
        assert (list(image.stats.min), list(image.stats.max)) == ([0.0], [255.0])  # raw uint8 pixels
        assert image.processUnits is None  # no normalization for a reader to apply: the model scales them itself
        [labels] = scores.associatedFiles
        assert (scores.name, labels.name, labels.type) == (b"probabilities", b"labels.txt",
                                                            schema.AssociatedFileType.TENSOR_AXIS_LABELS)
        with zipfile.ZipFile(io.BytesIO(open(row.path, "rb").read())) as packed:  # packed in the file itself
            assert packed.read("labels.txt").decode().split() == ["circle", "square"]

        # MediaPipe Tasks runs the file from its metadata alone: the labels name the classes it scores.
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=row.path), max_results=2)
        with vision.ImageClassifier.create_from_options(options) as classifier, runtime.load(row.path) as litert:
            ours = litert.predict({"image": photos})["probabilities"]
            for photo, expected in zip(photos, ours):
                found = classifier.classify(Image(image_format=ImageFormat.SRGB, data=np.ascontiguousarray(photo)))
                scored = {c.category_name: c.score for c in found.classifications[0].categories}
                np.testing.assert_allclose([scored["circle"], scored["square"]], expected, atol=1e-6)


def _test_photos(photo_run, n=8):
    """`n` photos of the folder, read as RGB and fitted to 64 x 64 uint8 by the recipe's own rule."""
    from PIL import Image

    from kerakit.images import fit_image

    folder = photo_run[1] / "data" / "photos"
    paths = sorted(p for p in folder.glob("*/*_00[0-3].*") if not p.name.startswith("."))[:n]
    return [fit_image(np.asarray(Image.open(p).convert("RGB")), 64).numpy() for p in paths]


def test_the_edge_int8_file_is_verified_on_held_out_photos_with_its_size_and_latency_in_the_report(photo_run,
                                                                                                   tmp_path):
    target = tmp_path / "phone.toml"
    target.write_text(EDGE_INT8 + "[budget]\nsize_mb = 5\nlatency_ms = 20\n")
    report = _export(photo_run, tmp_path / "out", [str(target)])
    row = report.row("tflite-int8")
    assert row.verdict == "verified", row.reasons
    assert row["metric_change"] >= -0.01 and row["metric_rows"] >= 12  # held-out photos, drop <= 1 point
    assert 0 < row["size_bytes"] <= 5 * 1024 * 1024
    assert 0 < row["latency"]["p50_ms_b1"] <= 20 and row["latency"]["calls"] >= 10
    assert row["budget"] == {"size_mb": 5.0, "latency_ms": 20.0}


@pytest.mark.parametrize("budget, message", [
    ("latency_ms = 0.001", r"^over budget: \d+\.\d\d ms per row at batch 1 \(p50 on this machine; the target allows "
                           r"0\.001 ms\); use a smaller model or input, or a target with a larger budget$"),
    ("size_mb = 0.01", r"^over budget: model_int8\.tflite is 0\.\d\d MB \(the target allows 0\.01 MB\); use a "
                       r"smaller model or input, or a target with a larger budget$"),
])
def test_a_budget_the_edge_file_cannot_meet_fails_it_in_one_line(photo_run, tmp_path, budget, message):
    from kerakit.errors import VerificationFailed

    target = tmp_path / "watch.toml"
    target.write_text(EDGE_INT8 + f"[budget]\n{budget}\n")
    with pytest.raises(VerificationFailed) as failed:
        _export(photo_run, tmp_path / "out", [str(target)])
    [reason] = failed.value.report.row("tflite-int8").reasons
    assert "\n" not in reason
    assert __import__("re").match(message, reason), reason


def test_a_budget_of_size_or_latency_takes_any_format_and_names_its_unit():
    from kerakit.errors import KerakitError
    from kerakit.export.targets import parse_target

    target = parse_target({"artifacts": [{"format": "onnx"}], "budget": {"size_mb": 5, "latency_ms": 20}}, "t")
    assert (target.budget.size_mb, target.budget.latency_ms) == (5.0, 20.0)
    with pytest.raises(KerakitError, match=r"invalid latency_ms=-1\. Expected a number of milliseconds > 0\.$"):
        parse_target({"artifacts": [{"format": "onnx"}], "budget": {"latency_ms": -1}}, "t")
    with pytest.raises(KerakitError, match=r"unknown key\(s\) latency\. Allowed: flash_kb, ram_kb \(formats that "
                                           r"measure their footprint: tflite-micro\); latency_ms, size_mb \(any "
                                           r"format\)\.$"):
        parse_target({"artifacts": [{"format": "onnx"}], "budget": {"latency": 20}}, "t")
