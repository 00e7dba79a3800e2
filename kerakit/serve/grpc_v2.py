"""KServe v2 / Open Inference Protocol over gRPC: `inference.GRPCInferenceService`
(what `tritonclient.grpc` and the kserve SDK's gRPC client speak), on the same
model table, batching, metrics and request log as the REST protocols.

    server = await start(serving, "127.0.0.1:8001")   # in the app's event loop
    ...
    await server.stop(5)

In the app, `KServeV2GRPC(address)` is the protocol table's entry that does this in the
app's lifespan (`kerakit serve --grpc-port`).

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer,
with typed `contents` or `raw_input_contents` (every datatype; FP16 raw only, as
the protocol has no typed field for it). Answers carry `raw_output_contents`, so
NaN and infinities pass through unchanged. Bad requests get the REST error's
message with INVALID_ARGUMENT (400), NOT_FOUND (404) or RESOURCE_EXHAUSTED (413,
and bodies over --max-body-mb, which gRPC refuses itself); an input whose values are
in two places (`contents` and a `raw_input_contents` entry, or two typed fields) is
INVALID_ARGUMENT naming it, as Triton answers. Overload says so: UNAVAILABLE past
--max-queue, RESOURCE_EXHAUSTED past --max-concurrent-rpcs (see `server_options`).
"""

from __future__ import annotations

from importlib.metadata import version as package_version

import grpc
import numpy as np

from kerakit.dtypes import V2_TYPES
import kerakit.serve.images as images
import kerakit.serve.kserve_v2 as kserve_v2
import kerakit.serve.tables as tables
from kerakit.serve.context import Protocol, Serving
from kerakit.serve.decoding import to_array
from kerakit.serve.kserve_v2 import Wanted, check_datatype, check_shape, output_array
from kerakit.serve.models import BadRequest, Model, ServeOptions
from kerakit.serve.proto import oip_messages_pb2 as pb
from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc
from kerakit.serve.tensors import from_raw, strings, to_raw, v2_datatype

PROTOCOL = "grpc"  # its label in metrics and the request log
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE}
IDLE_CLOSE_MS = 300_000  # a connection with no call for 5 minutes is closed (GOAWAY): it holds a slot of --max-connections
PENDING_CALLS = 100_000  # grpc core's limit on calls not yet picked up (see `server_options`)
# The typed-contents field of each datatype (FP16 has none).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class Failure(Exception):
    """A request's error answer: raised out of `Serving.handle`'s result into `context.abort`."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- requests and responses

def decode(model: Model, request: pb.ModelInferRequest, max_elements: int) -> tuple[dict, dict]:
    """A ModelInferRequest -> (checked inputs, {"id", "outputs": [Wanted]}), the REST decoder's rules."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                         "send one per input, in order.")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"input {tensor.name[:100]!r}"
        if tensor.name not in model.inputs:
            raise BadRequest(f"Unknown input {tensor.name[:100]!r}; model {model.name!r} takes {sorted(model.inputs)}.")
        if tensor.name in arrays:
            raise BadRequest(f"Input {tensor.name!r} is given twice.")
        photos = images.photo_input(model, tensor.name) if tensor.datatype == "BYTES" else None
        if photos is not None:  # encoded photos for an image input
            arrays[tensor.name] = images.grpc_tensor(tensor, raw[i] if raw else None, photos, where,
                                                     max_elements)
            continue
        shape = list(tensor.shape)
        count = check_shape(shape, where, max_elements)
        datatype = check_datatype(tensor.datatype, model.inputs[tensor.name].dtype, where)
        given = [f.name for f, _ in tensor.contents.ListFields()]  # the typed fields holding values
        if raw and given:
            raise BadRequest(f"{where}: has both contents ({given[0]}) and a raw_input_contents entry; "
                             "send its values in one of them.")
        array = from_raw(raw[i], datatype, shape, where) if raw else _from_contents(tensor.contents, given, datatype, where)
        if array.size != count:
            raise BadRequest(f"{where}: contents have {array.size} elements but shape {shape} needs {count}.")
        arrays[tensor.name] = array.reshape(shape)
    wanted = []
    for out in request.outputs:
        if out.name not in model.outputs:
            raise BadRequest(f"Unknown output {out.name[:100]!r}; model {model.name!r} has {sorted(model.outputs)}.")
        wanted.append(Wanted(out.name, True, _class_count(out.parameters.get("classification"), out.name)))
    if not wanted:
        wanted = [Wanted(n, True) for n in model.outputs]
    return tables.check(model, arrays, max_elements), {"id": request.id, "outputs": wanted}


def _from_contents(contents: pb.InferTensorContents, given: list[str], datatype: str, where: str) -> np.ndarray:
    """The values of the one typed field `datatype` takes; another field, or two, are refused as Triton does."""
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents.")
    if len(given) > 1:
        raise BadRequest(f"{where}: contents has {' and '.join(given)}; send its values in one field, {field} for {datatype}.")
    if given and given[0] != field:
        raise BadRequest(f"{where}: datatype {datatype} takes its values in {field}, not {given[0]}.")
    values = getattr(contents, field)
    if datatype == "BYTES":
        try:
            return strings([v.decode("utf-8") for v in values], where)
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: BYTES contents are not UTF-8 text; the model takes strings.") from None
    return to_array(np.asarray(values, dtype=np.float64 if datatype.startswith("FP") else None)
                    if len(values) else np.zeros(0, V2_TYPES[datatype]), V2_TYPES[datatype], where)


def _class_count(param, name: str) -> int:
    if param is None:
        return 0
    kind = param.WhichOneof("parameter_choice")
    value = getattr(param, kind) if kind else None
    if kind not in ("int64_param", "uint64_param") or value < 0:
        raise BadRequest(f"outputs {name!r}: parameter 'classification' must be a non-negative integer.")
    return int(value)


def encode(model: Model, context: dict, result: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    """The ModelInferResponse: every output as raw_output_contents (bytes exact, NaN included)."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=context["id"])
    for want in context["outputs"]:
        value = output_array(model, want, result)
        response.outputs.add(name=want.name, datatype=v2_datatype(value), shape=list(value.shape))
        response.raw_output_contents.append(to_raw(value))
    return response


# --------------------------------------------------------------------------- the service

class Service(pb_grpc.GRPCInferenceServiceServicer):
    """The servicer: metadata from the model table, ModelInfer through `Serving.handle`."""

    def __init__(self, serving: Serving):
        self.serving = serving

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        try:
            self.serving.lookup(request.name, request.version)
        except BadRequest:
            return pb.ModelReadyResponse(ready=False)  # as REST's 404 reads: not ready, not an error
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="kerakit", version=package_version("kerakit"),
                                         extensions=kserve_v2.EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            meta = kserve_v2.model_metadata(self.serving.lookup(request.name, request.version))
        except BadRequest as e:
            await context.abort(CODES[e.status], str(e))
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        async def prepare(model: Model):
            return decode(model, request, self.serving.options.max_elements)

        response = await self.serving.handle(PROTOCOL, request.model_name, request.model_version or None,
                                             prepare, encode, Failure)
        if isinstance(response, Failure):
            await context.abort(CODES.get(response.status, grpc.StatusCode.UNKNOWN), str(response))
        return response


async def start(serving: Serving, address: str) -> grpc.aio.Server:
    """The gRPC server on `address`, started in the running event loop (the app's), with the limits
    of `serving.options` (see `server_options`)."""
    options = serving.options
    server = grpc.aio.server(options=server_options(options), maximum_concurrent_rpcs=options.max_concurrent_rpcs)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Service(serving), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server


def server_options(options: ServeOptions) -> list[tuple[str, int]]:
    """grpc core's settings: message sizes, the port shared by --workers N, and what bounds a client.

    - A connection that has not finished its HTTP/2 handshake within --header-timeout-s is closed, one
      idle for IDLE_CLOSE_MS gets a GOAWAY (a client reconnects on its next call), and past
      --max-connections a new one is refused (the client sees UNAVAILABLE: failed to connect).
    - Calls in flight past --max-concurrent-rpcs are answered RESOURCE_EXHAUSTED ('Concurrent RPC limit
      exceeded!'), inference requests past --max-queue UNAVAILABLE (`Serving.handle`).
    - grpc core's own guard on calls waiting to be picked up (1,000, then cancelled at random up to 3,000)
      is moved out of the way: it answers a bare CANCELLED, which clients read as their own doing and do
      not retry (1,807 of 2,000 concurrent unary calls answered, 193 CANCELLED; 8,000 of 8,000 with it
      raised). Waiting calls are picked up in microseconds and then meet the limits above.
    """
    settings = [("grpc.max_receive_message_length", options.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1),  # --workers N share the port, as for HTTP
                ("grpc.server_handshake_timeout_ms", int(options.header_timeout_s * 1000)),
                ("grpc.max_connection_idle_ms", IDLE_CLOSE_MS),
                ("grpc.server.max_pending_requests", PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS)]
    if options.max_connections is not None:
        settings.append(("grpc.max_allowed_incoming_connections", options.max_connections))
    return settings


class KServeV2GRPC(Protocol):
    """The gRPC service on `address` as an entry of the app's protocol table: no HTTP routes, so no
    OpenAPI paths; started and stopped with the app."""

    title = "KServe v2 gRPC"
    GRACE_S = 5  # requests in flight at shutdown get this long to finish, as uvicorn gives HTTP ones

    def __init__(self, address: str):
        self.address = address
        self.server: grpc.aio.Server | None = None

    def listening(self) -> str:
        return f"{self.title}: {self.address} (inference.GRPCInferenceService)"

    async def start(self, serving: Serving) -> None:
        self.server = await start(serving, self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.GRACE_S)
            self.server = None
