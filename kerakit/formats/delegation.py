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


def placement(model: bytes) -> Placement:
    """The delegate partitions and the ops left outside them, from LiteRT's default CPU interpreter.

    The interpreter keeps the model's original nodes beside the DELEGATE nodes
    that replaced them, so the ops that really run are found by walking back
    from the outputs through what produces each tensor at run time: a
    DELEGATE node where one outputs it, otherwise the op itself (not delegated).
    """
    from ai_edge_litert.interpreter import Interpreter

    from kerakit.quiet import muted_stderr

    with muted_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
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
