"""Which ops of a `.tflite` file LiteRT's CPU delegate (XNNPACK) runs, as the interpreter itself reports.

LiteRT applies XNNPACK when it allocates tensors: every run of consecutive ops
XNNPACK takes becomes one DELEGATE node, and the ops it refuses stay LiteRT
builtin kernels between those partitions. An int8 MobileNetV3 is cut into 19
partitions this way (XNNPACK takes no int8 HARD_SWISH), and the hops between
them cost more than int8 saves. `placement` reads what the interpreter built;
the tflite format keeps just the refused op types in float (XNNPACK runs them
in fp32, with the int8 ops around them) until nothing is left outside.

    placement(open("model_int8.tflite", "rb").read())
    # Placement(partitions=1, not_delegated={}, ops=127)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DELEGATE = "DELEGATE"


@dataclass(frozen=True)
class Placement:
    partitions: int                     # DELEGATE nodes: 1 when the delegate runs the whole graph
    not_delegated: dict[str, int] = field(default_factory=dict)  # op type -> count, run by LiteRT's own kernels
    ops: int = 0                        # nodes the interpreter holds (the model's ops plus DELEGATE nodes)

    @property
    def fully_delegated(self) -> bool:
        return self.partitions == 1 and not self.not_delegated

    def to_dict(self) -> dict:
        return {"delegate_partitions": self.partitions, "not_delegated": dict(self.not_delegated)}


def placement(model: bytes, rows: dict[str, tuple] | None = None) -> Placement:
    """The delegate partitions and the ops left outside them, from LiteRT's default CPU interpreter.

    rows: one row's shape per input (the calibration sample's, without the batch), for inputs the
    model takes at any size (an image of any height and width): the file's own shape for such an
    input is a 1x1 placeholder, and a 3x3 VALID convolution cannot be prepared at 1x1 (XNNPACK: "failed
    to reshape"). The interpreter is allocated at a real row's shape instead.

    The interpreter keeps the model's original nodes beside the DELEGATE nodes
    that replaced them, so the ops that really run are found by walking back
    from the outputs through what produces each tensor at run time: a
    DELEGATE node where one outputs it, otherwise the op itself (not delegated).
    """
    from ai_edge_litert.interpreter import Interpreter

    from kerakit.quiet import muted_stderr

    with muted_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_content=model, num_threads=1)
        sizes = _sizes(interpreter, rows)
        try:
            interpreter.allocate_tensors()
        except RuntimeError as e:
            raise ValueError(blocking_op(model, sizes, e)) from None
    nodes = interpreter._get_ops_details()  # noqa: SLF001 - LiteRT's only view of the delegated graph
    producer = {}
    for node in nodes:  # DELEGATE nodes come after the ops they replaced: they win
        for tensor in node["outputs"]:
            if node["op_name"] == DELEGATE or tensor not in producer:
                producer[tensor] = node
    wanted = [d["index"] for d in interpreter.get_output_details()]
    running, outside = set(), Counter()
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or node["index"] in running:
            continue  # a graph input or a constant, or already walked
        running.add(node["index"])
        if node["op_name"] != DELEGATE:
            outside[node["op_name"]] += 1
        wanted.extend(t for t in node["inputs"] if t >= 0)
    partitions = sum(1 for n in nodes if n["op_name"] == DELEGATE and n["index"] in running)
    return Placement(partitions, dict(sorted(outside.items())), len(nodes))


def _inputs(interpreter) -> dict:
    """Input details by name: the serving signature's, or the tensors' own names without one."""
    signatures = interpreter.get_signature_list()
    if signatures:
        return interpreter.get_signature_runner(next(iter(signatures))).get_input_details()
    return {d["name"]: d for d in interpreter.get_input_details()}


def _sizes(interpreter, rows: dict[str, tuple] | None) -> dict[str, tuple]:
    """Resize each input the model takes at any size (a -1 past the batch) to its row's shape; what was set."""
    sizes = {}
    for name, detail in _inputs(interpreter).items():
        signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
        if name in (rows or {}) and any(d < 0 for d in signature[1:]):
            sizes[name] = (max(signature[0], 1), *rows[name])
            interpreter.resize_tensor_input(detail["index"], list(sizes[name]))
    return sizes


def blocking_op(model: bytes, sizes: dict[str, tuple], error: Exception) -> str:
    """One line naming the op LiteRT cannot prepare, and at which input shapes.

    The delegate's own error names no op ("XNNPack delegate failed to reshape runtime"), so the model is
    allocated again with LiteRT's builtin kernels alone, whose error does ("Node number 0 (CONV_2D)").
    """
    import re

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model, num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = _inputs(interpreter)
    for name, shape in sizes.items():
        interpreter.resize_tensor_input(details[name]["index"], list(shape))
    shapes = ", ".join(f"{k}={'x'.join(str(int(n)) for n in sizes.get(k, d['shape']))}" for k, d in details.items())
    shapes += "" if sizes else " (the file's own input shape)"
    try:
        interpreter.allocate_tensors()
    except RuntimeError as plain:
        found = re.search(r"Node number (\d+) \((\w+)\) failed to prepare", str(plain))
        if found:
            return f"LiteRT cannot prepare op {found[2]} (node {found[1]}) at {shapes}"
        return f"LiteRT cannot prepare the model at {shapes}: {str(plain).splitlines()[0]}"
    empty = _first_empty_output(interpreter)
    if empty:  # LiteRT's kernels take an empty tensor; XNNPACK refuses it
        return f"LiteRT cannot prepare op {empty[0]} (node {empty[1]}) at {shapes}: its output would be empty ({empty[2]})"
    return (f"the XNNPACK delegate cannot prepare the model at {shapes} (LiteRT's own kernels prepare every op): "
            f"{str(error).splitlines()[0]}")


def _first_empty_output(interpreter) -> tuple[str, int, str] | None:
    """(op, node, shape) of the first op of an allocated interpreter whose output has a 0-sized dimension."""
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    for node in interpreter._get_ops_details():  # noqa: SLF001 - execution order
        for tensor in node["outputs"]:
            shape = shapes.get(tensor)
            if shape is not None and len(shape) and 0 in shape:
                return node["op_name"], node["index"], "x".join(str(int(n)) for n in shape)
    return None
