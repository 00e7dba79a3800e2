"""The kserve SDK's calls, run in a separate process by tests/test_serve_clients.py.

The SDK registers the protocol's `inference.*` messages in protobuf's default
descriptor pool, as tritonclient.grpc and kerakit's gRPC service do, under another
file name, so the three cannot be imported into one process ("duplicate symbol
'inference.ServerLiveRequest'"). Nothing here imports kserve at module level: the
test process imports this module to name the functions, the worker runs them.
"""

import asyncio
import sys


def use_sdk(directory):
    """The worker's initializer: the SDK's directory after the venv's own packages."""
    sys.path.append(directory)


class ServerError(Exception):
    """The server answered an error status; the message is the SDK's."""


def _call(url, method, *args, **kwargs):
    import httpx
    from kserve import InferenceRESTClient, RESTConfig

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await getattr(client, method)(url, *args, **kwargs)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except httpx.HTTPStatusError as e:
        raise ServerError(str(e)) from None


def health(url, model):
    return _call(url, "is_server_live"), _call(url, "is_server_ready"), _call(url, "is_model_ready", model)


def infer(url, model, inputs, outputs, binary, request_id):
    """inputs: {name: (array, datatype)}; outputs: [(name, class_count)] -> ({name: array}, id)."""
    from kserve import InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    tensors = []
    for name, (array, datatype) in inputs.items():
        t = InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=binary)
        tensors.append(t)
    wanted = [RequestedOutput(n, {"binary_data": binary, **({"classification": k} if k else {})})
              for n, k in outputs]
    request = InferRequest(model, tensors, request_id=request_id or None, request_outputs=wanted)
    response = _call(url, "infer", request, model_name=model)
    return {o.name: o.as_numpy() for o in response.outputs}, response.id or ""
