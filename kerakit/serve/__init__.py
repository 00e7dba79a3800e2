"""`kerakit serve`: an HTTP inference server speaking KServe v2 and TF Serving REST.

    kerakit serve runs/demo                       # the run's ONNX model, named after its recipe
    kerakit serve --model-dir runs/demo/export/triton

    from kerakit.serve import ServeOptions, resolve, serve
    serve(resolve("runs/demo"), ServeOptions(max_batch=32), port=8000)

Protocols (clients written for Triton, KServe or TF Serving work unchanged):

- KServe v2 / Open Inference Protocol: GET /v2, /v2/health/{live,ready},
  /v2/models/NAME[/versions/V][/ready|/config], POST /v2/models/NAME[/versions/V]/infer
  with JSON tensors or the binary tensor data extension (what `tritonclient` sends).
- TF Serving REST: GET /v1/models/NAME[/versions/V][/metadata],
  POST /v1/models/NAME[/versions/V]:predict with `instances` (rows) or `inputs` (columns).
- GET /metrics: Prometheus text format.

Models are loaded once at start-up through `kerakit.runtime`; request paths
only look names up in that table, so no request can make the server read a file.
Every bad request is answered 4xx with `{"error": "..."}` naming the problem.
A call quicker than handing it to another thread (`models.INLINE_BELOW_S`,
judged by the batch-1 time measured at load) runs on the event loop; longer
ones run on one thread per model, off the event loop; with
`max_batch > 1`, concurrent requests are merged into one batch (dynamic
batching, as Triton calls it) for up to `batch_wait_ms`. Answered requests
go to the request log (`kerakit.request_log`, read by `kerakit drift`).

Where things are (the data plane apart from the protocols, as in KServe):

- `models`: what to serve (`resolve`, `discover`) and the loaded `Model`:
  protocol-free metadata, input checks, inference with dynamic batching.
- `http`: what every request shares: model lookup, body limits, JSON errors,
  metrics, the request log (`Context.answer`).
- `decoding`: JSON bodies to arrays, strictly. `images` and `tables`: what an image model's input (an
  encoded photo) and a table model's columns (null as a missing value, a row as the table has it) also take.
- `kserve_v2`, `tfserving`, `grpc_v2`: one module per protocol: its decoder, encoder and
  metadata, and its `Protocol` (`context`): the routes it adds with their OpenAPI fragment,
  or (gRPC) the server it starts and stops beside the app.
- `openapi`: the fragments' shared parts, merged into the document at GET /openapi.json.
- `app`: the protocol table (`protocols`), the app builder (the model table, every protocol's
  routes, the merged document, a lifespan that starts and stops the protocols) and `serve`,
  which runs it under uvicorn.

Adding a protocol is one new module with a `Protocol` subclass, listed in `app.protocols`:
`routes(ctx)` (inference routes call `ctx.answer(request, PROTOCOL, decode, encode)`,
metadata routes use `ctx.describe(fn)`) and `openapi(model_names)`, the paths of exactly
those routes (a test holds the app's routes and /openapi.json's paths to one set), `title`
and `infer_url(url, name)` for the start-up banner; a protocol on another transport (as
`grpc_v2`) calls `Serving.handle` from its own server, run by `start`/`stop`.
"""

from kerakit.serve.app import app_from_env, create_app, serve
from kerakit.serve.models import BadRequest, ModelEntry, ServeOptions, discover, resolve

__all__ = ["BadRequest", "ModelEntry", "ServeOptions", "app_from_env", "create_app", "discover", "resolve", "serve"]
