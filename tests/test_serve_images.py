"""`kerakit serve` takes the photo itself for an image model (issue 26): a JPEG or PNG sent over KServe v2
(JSON base64, binary, gRPC) or TF Serving ({"b64": ...}) is answered as if the client had sent the pixels the
training pipeline makes of that file (`read_image`, then `fit_image` by the recipe's FIT, in tf.data); a body
that is not an image is a 400 naming the input and the problem.

One server, two copies of one small uint8 model: `photo` in a model directory (no run: letterbox, a kerakit
recipe's default) and `cropped`, the model of a run whose recipe says FIT = "crop".
"""

import base64
import io
import json

import numpy as np
import pytest
import requests
from conftest import Server
from PIL import Image

SIZE = 32


def _model():
    """uint8 32x32x3 in, 4 class scores out; a dense layer over every pixel, so any changed pixel shows."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="probabilities",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.2, seed=0))(x)
    return keras.Model(inputs, outputs)


def _encoded(kind: str, mode: str = "RGB") -> bytes:
    """A 24 x 40 photo (wider than tall: letterbox and crop differ), smooth with noise, as a file's bytes."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:24, 0:40]
    pixels = np.stack([x * 6, y * 10, (x + y) * 4], -1) + rng.integers(0, 40, (24, 40, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


FILES = {"jpeg": _encoded("JPEG"), "png": _encoded("PNG"), "grey png": _encoded("PNG", "L"),
         "webp": _encoded("WEBP")}


def training_pixels(data: bytes, fit: str) -> np.ndarray:
    """What the training pipeline makes of a file: the folder reader, then the recipe's preprocess in tf.data."""
    import tensorflow as tf

    from kerakit.images import fit_image
    from kerakit.sources.folder import read_image

    rgb, _ = read_image(io.BytesIO(data))
    dataset = tf.data.Dataset.from_tensors(rgb).map(lambda image: fit_image(image, SIZE, fit))
    return next(iter(dataset)).numpy()[None]


RUN_RECIPE = '''"""The run's copy of its recipe: serve reads FIT from it."""
from kerakit.recipe import Input

TASK = "classification"
DATASET = "photos"
SIZE = 32
FIT = "crop"  # fill the frame, the centre kept
INPUTS = [Input("image", shape=(SIZE, SIZE, 3), dtype="uint8")]


def preprocess(example, config):
    raise NotImplementedError


def build_model(hp, data):
    raise NotImplementedError
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    model = _model()
    (root / "repo" / "photo" / "1").mkdir(parents=True)
    model.save(root / "repo" / "photo" / "1" / "model.keras")
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"recipe": "cropped", "config": {}}))  # a finished run, as
    (run / "manifest.json").write_text(json.dumps({"artifacts": {}}))  # far as serve reads one
    (run / "recipe.py").write_text(RUN_RECIPE)
    s = Server(run / "model.keras", "--model-dir", root / "repo", "--no-log", log_dir=root, timeout=240)
    yield s
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


def v2_pixels(server, model: str, pixels: np.ndarray) -> np.ndarray:
    """The model's answer for uint8 pixels, sent as pixels."""
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                        "data": pixels.ravel().tolist()}]}
    answer = requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(len(pixels), -1)


def v2_photo(server, model: str, data: bytes) -> requests.Response:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(data).decode()]}]}
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


@pytest.mark.parametrize("kind", list(FILES))
@pytest.mark.parametrize("model, fit", [("photo", "letterbox"), ("cropped", "crop")])
def test_a_photo_is_answered_as_the_pixels_training_makes_of_it(server, kind, model, fit):
    data = FILES[kind]
    answer = v2_photo(server, model, data)
    assert answer.status_code == 200, answer.text
    got = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(1, -1)
    np.testing.assert_array_equal(got, v2_pixels(server, model, training_pixels(data, fit)))
    # Not vacuous: the other fit rule, or a plain stretch to 32 x 32, gives other pixels and another answer.
    other = training_pixels(data, "crop" if fit == "letterbox" else "letterbox")
    stretched = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE)))[None]
    for pixels in (other, stretched):
        assert np.abs(got - v2_pixels(server, model, pixels)).max() > 1e-3


def test_tritonclient_sends_photos_as_binary_bytes_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    files = np.array([FILES["jpeg"], FILES["png"]], dtype=object)
    want = v2_pixels(server, "photo", np.concatenate([training_pixels(f, "letterbox") for f in files]))
    for module, url in ((httpclient, server.url[len("http://"):]), (grpcclient, f"127.0.0.1:{server.grpc_port}")):
        client = module.InferenceServerClient(url)
        tensor = module.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(files, **({"binary_data": True} if module is httpclient else {}))
        got = client.infer("photo", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        with pytest.raises(Exception, match="input 'image', element 1: not an image"):
            bad = module.InferInput("image", [2], "BYTES")
            bad.set_data_from_numpy(np.array([FILES["png"], b"no image at all"], dtype=object),
                                    **({"binary_data": True} if module is httpclient else {}))
            client.infer("photo", [bad])
        client.close()


def test_grpc_bytes_contents_carry_photos_and_a_corrupt_one_is_invalid_argument(server):
    """bytes_contents, the typed field tritonclient never fills, through kerakit's own stub."""
    import grpc

    from kerakit.serve.proto import oip_messages_pb2 as pb
    from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc

    def request(*files):
        message = pb.ModelInferRequest(model_name="cropped")
        message.inputs.add(name="image", datatype="BYTES", shape=[len(files), 1]).contents.bytes_contents.extend(files)
        return message

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request(FILES["webp"]))
        got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, -1)
        np.testing.assert_allclose(got, v2_pixels(server, "cropped", training_pixels(FILES["webp"], "crop")),
                                   rtol=1e-6, atol=1e-7)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request(FILES["png"][:40]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'image': a PNG file that cannot be decoded (truncated or corrupt" in caught.value.details()


def test_tf_serving_b64_rows_and_columns(server):
    want = v2_pixels(server, "photo", np.concatenate([training_pixels(FILES[k], "letterbox") for k in ("jpeg", "png")]))
    b64 = [{"b64": base64.b64encode(FILES[k]).decode()} for k in ("jpeg", "png")]
    url = f"{server.url}/v1/models/photo:predict"
    for body, key in (({"instances": b64}, "predictions"), ({"instances": [{"image": v} for v in b64]}, "predictions"),
                      ({"inputs": {"image": b64}}, "outputs"), ({"inputs": b64}, "outputs")):
        answer = requests.post(url, json=body, timeout=60)
        assert answer.status_code == 200, (body.keys(), answer.text)
        np.testing.assert_allclose(np.array(answer.json()[key], np.float32), want, rtol=1e-6, atol=1e-7)


def _big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buffer, "PNG")  # 48 MP of black: a few kB
    return buffer.getvalue()


@pytest.mark.parametrize("data, status, message", [
    (FILES["jpeg"][:len(FILES["jpeg"]) // 2], 400, "input 'image': a JPEG file that cannot be decoded (truncated or corrupt"),
    (b"%PDF-1.4 not a photo", 400, "input 'image': not an image (20 bytes starting b'%PDF-1.4'); send the bytes of a JPEG"),
    (b"", 400, "input 'image': empty; send the bytes of a JPEG"),
    (_big_png(), 413, "input 'image': a 8000 x 6000 PNG is over the server's 40,000,000 pixels"),
])
def test_a_body_that_is_not_a_photo_is_refused_naming_the_input_and_the_problem(server, data, status, message):
    for answer in (v2_photo(server, "photo", data),
                   requests.post(f"{server.url}/v1/models/photo:predict", timeout=60,
                                 json={"instances": [{"b64": base64.b64encode(data).decode()}]})):
        assert answer.status_code == status and message in answer.json()["error"], answer.text


@pytest.mark.parametrize("body, message", [
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]},
     "input 'image': element 0 is not base64 ('not base64!'...)"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 32], "data": ["AA=="]}]},
     "input 'image': encoded photos take shape [n] or [n, 1] (one file per row), got [1, 32]"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]},
     "input 'image': 1 files, but shape [2] needs 2"),
])
def test_a_malformed_photo_tensor_is_a_400_naming_it(server, body, message):
    answer = requests.post(f"{server.url}/v2/models/photo/infer", json=body, timeout=60)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_a_fit_rule_the_server_cannot_apply_fails_the_start_in_one_line(tmp_path):
    from kerakit.errors import KerakitError
    from kerakit.serve.images import recorded_fit

    (tmp_path / "config.json").write_text(json.dumps({"recipe": "r", "config": {}}))
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    (tmp_path / "recipe.py").write_text('FIT = "stretch"\n')
    with pytest.raises(KerakitError) as caught:
        recorded_fit(tmp_path / "model.keras")
    assert "recipe.py:1: FIT must be a string literal the server can read: Unknown fit='stretch': expected one " \
           "of letterbox, crop" in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "recipe.py").write_text("SIZE = 64\n")  # a recipe from before FIT: letterbox, as it trained
    assert recorded_fit(tmp_path / "model.keras") == recorded_fit(tmp_path.parent / "elsewhere.onnx") == "letterbox"
