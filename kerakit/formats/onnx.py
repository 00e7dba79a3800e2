"""ONNX files on ONNX Runtime: float32 (tf2onnx from the serving SavedModel), dynamic and static int8.

Runtime settings (threads, graph optimization level) are keyword options of
the predictor; `kerakit bench` compares them and saves the fastest as the
file's default.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from kerakit import cpu, files
from kerakit.errors import KerakitError, utf8_name
from kerakit.formats import calibration
from kerakit.formats.base import Format, Option, Predictor, Spec, Variant
from kerakit.formats.savedmodel import SIGNATURE

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 18, 17  # 13: per-channel QDQ; 18: tf2onnx 1.17's newest
OPTIMIZATION = ("disable", "basic", "extended", "all")
PREFIX_OPS = {"Sub", "Add", "Mul", "Div", "Sqrt", "Reciprocal", "Max", "Min", "Cast", "Identity"}
# ONNX tensor types -> kerakit's dtype names (numpy's; strings are object arrays, as ORT takes them).
TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
         "tensor(bool)": "bool", "tensor(string)": "object",
         **{f"tensor({t})": t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")}}


def check_opset(opset) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise KerakitError(f"Invalid opset={opset!r}. Expected an integer from {MIN_OPSET} to {MAX_OPSET}.")
    return opset


# --------------------------------------------------------------------------- conversion

def convert(context, spec, path: Path) -> dict | None:
    opset = spec.option("opset")
    if spec.quantization == "none":
        write_onnx(context.savedmodel(), opset, path)
        note = None
    else:
        fp32 = context.intermediate(f"float-{opset}.onnx", lambda p: write_onnx(context.savedmodel(), opset, p))
        note = quantize(fp32, spec.quantization, context.calibration, path, spec.option("cpus"))
    cpus = {"int8_cpus": note["cpus"]} if note else {}
    add_metadata(path, {**context.metadata, "quantization": spec.quantization, **cpus})
    return note


def add_metadata(path: Path, metadata: dict) -> None:
    """kerakit's metadata (name, Keras output order, labels) as the model's "kerakit" metadata_props entry."""
    import json

    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != "kerakit"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key="kerakit", value=json.dumps(metadata, sort_keys=True))
    with files.atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def write_onnx(savedmodel: Path, opset: int, path: Path) -> None:
    """tf2onnx from the serving SavedModel, as `python -m tf2onnx.convert --saved-model` does.

    Not `from_keras` (broken with Keras 3) and not `from_function`: that one
    turns tensors a layer captured (an adapted Normalization's mean and
    variance) into extra graph inputs. The SavedModel path freezes them.
    """
    import onnx
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    from kerakit.quiet import muted_stderr

    _register_handlers()
    with muted_stderr():
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(savedmodel), None, None, None, [SIGNATURE], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        proto, _ = tf2onnx_convert._convert_common(
            graph_def, name=path.stem, opset=opset, input_names=inputs, output_names=outputs,
            tensors_to_rename=renames, initialized_tables=tables, continue_on_error=True)
    _check_ops(proto, opset)
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"  # tf2onnx names it unk__NN
    stable_names(proto.graph)
    with files.atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


_MADE_NAME = re.compile(r"^(.*)__(\d+)(:\d+)?$")  # tf2onnx's `make_name`: `const_axes__21`, `Shape__18:0`


def stable_names(graph) -> None:
    """Renumber the names tf2onnx made (`NAME__N`) 1, 2, ... in graph order, in place.

    tf2onnx numbers them from a process-wide counter, and how far it has counted differs from one conversion
    to the next (a second export in one process, and even a fresh process: `const_axes__21` once,
    `const_axes__24` the next time), so the same model gave ONNX files, and int8 files quantized from them,
    that differ in their names and bytes. Renumbered in the order they appear, a model converts to one file.
    Graph inputs and outputs keep their names (clients call them by name).
    """
    def made(name: str):
        return _MADE_NAME.match(name) if name and name not in kept else None

    kept = {v.name for v in [*graph.input, *graph.output]}
    constants = {t.name for g in _graphs(graph) for t in g.initializer}
    numbers: dict[str, str] = {}
    for name in _names_in_order(graph):
        found = made(name)
        if found and found.group(2) not in numbers:
            numbers[found.group(2)] = str(len(numbers) + 1)

    def rename(name: str) -> str:
        found = made(name)
        if not found:
            return name
        # Of equal constants tf2onnx keeps one, either's name (`const_axes__8` or `const_starts__8`): no prefix.
        prefix = "const" if name in constants else found.group(1)
        return f"{prefix}__{numbers[found.group(2)]}{found.group(3) or ''}"

    _rename_all(graph, rename)
    for g in _graphs(graph):  # constants in the order the graph first uses them (tf2onnx's order varies too)
        first_use = {n: i for i, n in reversed(list(enumerate(_names_in_order(g))))}
        ordered = sorted(g.initializer, key=lambda t: (first_use.get(t.name, len(first_use)), t.name))
        ordered = [type(t).FromString(t.SerializeToString()) for t in ordered]
        del g.initializer[:]
        g.initializer.extend(ordered)


def _graphs(graph):
    """`graph` and the subgraphs of its nodes' attributes (If, Loop), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                yield from _graphs(sub)


def _names_in_order(graph):
    for g in _graphs(graph):
        for node in g.node:
            yield node.name
            yield from node.input
            yield from node.output
        # Every name _rename_all renames: a subgraph's inputs and outputs too (a Loop body's `cond__360`).
        for tensor in [*g.initializer, *g.value_info, *g.input, *g.output]:
            yield tensor.name
        for value in [*g.input, *g.output, *g.value_info]:
            yield from (d.dim_param for d in value.type.tensor_type.shape.dim)


def _rename_all(graph, rename) -> None:
    for g in _graphs(graph):
        for node in g.node:
            node.name = rename(node.name)
            for names in (node.input, node.output):
                renamed = [rename(n) for n in names]
                del names[:]
                names.extend(renamed)
        for tensor in [*g.initializer, *g.value_info, *g.input, *g.output]:
            tensor.name = rename(tensor.name)
        for value in [*g.input, *g.output, *g.value_info]:
            for d in value.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    d.dim_param = rename(d.dim_param)


_HANDLERS: list = []
# TensorFlow ops with no ONNX op and no ONNX Runtime kernel: why, and what to do instead.
NO_ROUTE = {"StringToHashBucketFast": "keras.layers.Hashing: ONNX has no op and ONNX Runtime no kernel for "
                                      "TensorFlow's string hash; hash before the model's input, or serve the savedmodel"}


def _register_handlers() -> None:
    """TensorFlow ops tf2onnx lacks, as handlers it finds by op name (registered once per process).

    Erfc (exact GELU, `gelu(approximate=False)`, computes 0.5 * x * erfc(-x / sqrt 2)): 1 - Erf(x).
    Log1p (`keras.ops.log1p`): Log(1 + x), within float32's rounding of 1 + x (|error| <= 6e-8).
    Bucketize (`keras.layers.Discretization(bin_boundaries=...)`): how many boundaries are <= x.
    """
    if _HANDLERS:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    def constant(ctx, name, value, like):
        return ctx.make_const(utils.make_name(name),
                              np.array(value, dtype=utils.map_onnx_to_numpy_type(ctx.get_dtype(like)))).output[0]

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):  # Erf is ONNX opset 9
            x = node.input[0]
            erf = ctx.make_node("Erf", [x], shapes=[ctx.get_shape(x)], dtypes=[ctx.get_dtype(x)]).output[0]
            node.type = "Sub"
            ctx.replace_inputs(node, [constant(ctx, "one", 1, x), erf])

    @tf_op("Log1p")
    class Log1p:
        @classmethod
        def version_6(cls, ctx, node, **kwargs):
            x = node.input[0]
            shifted = ctx.make_node("Add", [x, constant(ctx, "one", 1, x)], shapes=[ctx.get_shape(x)],
                                    dtypes=[ctx.get_dtype(x)]).output[0]
            node.type = "Log"
            ctx.replace_inputs(node, [shifted])

    _HANDLERS.extend([Erfc, Log1p, _bucketize_handler(tf_op, utils)])


def _bucketize_handler(tf_op, utils):
    """Bucketize(x, boundaries) -> int32 ReduceSum(Cast(Not(Unsqueeze(x, -1) < boundaries)), -1).

    TensorFlow's bucket is std::upper_bound's index: the count of boundaries x is not below (NaN: all of them).
    """
    from onnx import TensorProto

    @tf_op("Bucketize")
    class Bucketize:
        @classmethod
        def version_13(cls, ctx, node, **kwargs):  # Unsqueeze and ReduceSum take their axes as inputs from 13
            x, shape = node.input[0], ctx.get_shape(node.input[0])
            boundaries = np.array(node.get_attr_value("boundaries"), dtype=np.float32)
            if ctx.get_dtype(x) != TensorProto.FLOAT:  # compare ints and doubles as TensorFlow does: in double
                x = ctx.make_node("Cast", [x], attr={"to": TensorProto.DOUBLE}).output[0]
                boundaries = boundaries.astype(np.float64)
            last = ctx.make_const(utils.make_name("last_axis"), np.array([-1], np.int64)).output[0]
            column = ctx.make_node("Unsqueeze", [x, last]).output[0]
            edges = ctx.make_const(utils.make_name("boundaries"), boundaries).output[0]
            below = ctx.make_node("Less", [column, edges]).output[0]
            passed = ctx.make_node("Not", [below]).output[0]
            counts = ctx.make_node("Cast", [passed], attr={"to": TensorProto.INT32}).output[0]
            ctx.remove_node(node.name)
            ctx.make_node("ReduceSum", [counts, last], attr={"keepdims": 0}, outputs=node.output, name=node.name,
                          shapes=[shape], dtypes=[TensorProto.INT32])

    return Bucketize


def _check_ops(proto, opset: int) -> None:
    """tf2onnx logs unsupported TensorFlow ops and emits them as they are; make that an error.

    One line naming each op; an op with no ONNX Runtime route at all (`NO_ROUTE`) says why and what instead.
    """
    import onnx

    unknown = sorted({n.op_type for n in proto.graph.node
                      if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, max_inclusive_version=opset)})
    if unknown:
        why = "".join(f"; {op}: {NO_ROUTE[op]}" for op in unknown if op in NO_ROUTE)
        raise ValueError(f"TensorFlow op(s) {', '.join(unknown)} not supported by tf2onnx at opset {opset}{why}")


def float_prefix(path: Path) -> list[str]:
    """Names of the ONNX graph's input-normalization nodes (see `kerakit.formats.calibration`)."""
    import onnx

    graph = onnx.load(str(path)).graph
    ops = [(n.op_type, list(n.input), list(n.output), n) for n in graph.node]
    prefix = calibration.float_prefix(ops, {i.name for i in graph.input}, {t.name for t in graph.initializer},
                                      PREFIX_OPS)
    return [n.name for n in prefix]


# Which CPUs an int8 file must be right on (a target's `cpus = ...` for onnx int8), and the form each takes.
CPU_CLASSES = {
    "any": "every CPU: x86-64 with or without VNNI, and ARM64",
    "x86-vnni": "x86-64 CPUs with VNNI (AVX512-VNNI or AVX-VNNI) only",
    "arm": "ARM64 CPUs",
    "this": "the exporting machine's CPU class",
}
INT16_MAX = 32767


def check_cpus(cpus) -> str:
    if cpus not in CPU_CLASSES:
        raise KerakitError(f"Invalid cpus={cpus!r}. Expected one of {', '.join(CPU_CLASSES)} "
                           f"({'; '.join(f'{k}: {v}' for k, v in CPU_CLASSES.items())}).")
    return cpus


def saturation(form: dict) -> dict:
    """Whether a U8S8 form can saturate on x86 without VNNI: VPMADDUBSW adds two uint8 x int8 products into a
    signed 16-bit lane, so the worst pair is 2 * 255 * the widest weight (127 at 8 bits, 64 with reduce_range)."""
    if form["activations"] != "uint8":
        return {"worst_pair_sum": None, "safe_without_vnni": True, "why": "S8S8: no VPMADDUBSW pair sums"}
    widest = 64 if form["reduce_range"] else 127
    worst = 2 * 255 * widest
    safe = worst <= INT16_MAX
    return {"worst_pair_sum": worst, "safe_without_vnni": safe,
            "why": f"worst uint8 x int8 pair sum 2*255*{widest} = {worst:,} "
                   f"{'<=' if safe else '>'} {INT16_MAX:,} (int16 lane of VPMADDUBSW on x86 without VNNI)"}


def int8_form(machine: str | None = None, cpu_flags: set[str] | None = None, cpus: str = "this") -> dict:
    """The static int8 form for the CPUs an artifact must run on (`cpus`, a key of CPU_CLASSES), by ORT's guidance.

    ORT's quantization guide ("Data type selection", onnxruntime.ai/docs/performance/
    model-optimizations/quantization.html): "On x86-64 machines with AVX2 and AVX512
    extensions, ONNX Runtime uses the VPMADDUBSW instruction for U8S8 for
    performance"; that instruction may saturate, and "Reduce-range will quantize the
    weights to 7 bits. It is designed for the U8S8 format on AVX2 and AVX512 (non-VNNI)
    machines ... not needed on machines supporting VNNI"; "On AVX2 and AVX512 machines,
    you will generally need to enable reduce-range as well if per-channel is enabled."
    So on x86-64: uint8 activations, int8 weights (U8S8) QDQ, with reduce_range unless
    every CPU it runs on has VNNI. "any" (the default of a target) is that portable form:
    7-bit weights cannot saturate anywhere, and ARM and VNNI CPUs compute it exactly.
    "this" takes the exporting machine's class; "arm" ORT's default S8S8. Measured on
    MobileNetV3-Small, x86 (issue 15): U8S8 QDQ 1.21x (batch 1) and 1.38x (batch 32)
    faster than float32, where S8S8 QDQ was 3.8-4x slower.
    """
    if cpus == "this":
        cpus = {"x86-vnni": "x86-vnni", "x86": "any"}.get(machine_class(machine, cpu_flags), "arm")
    if cpus == "arm":
        form = {"activations": "int8", "weights": "int8", "reduce_range": False, "form": "QDQ S8S8",
                "why": "ARM64: ORT's default S8S8 (no U8S8 saturation issue off x86)"}
    else:
        vnni = cpus == "x86-vnni"
        form = {"activations": "uint8", "weights": "int8", "reduce_range": not vnni, "form": "QDQ U8S8",
                "why": "ORT's U8S8 kernels" + (" on VNNI CPUs only (full 8-bit weights)" if vnni else
                                               ": 7-bit weights (reduce_range) cannot saturate on x86 without VNNI")}
    return {**form, "cpus": cpus, "correct_on": CPU_CLASSES[cpus], "saturation": saturation(form)}


def quantize(fp32: Path, quantization: str, sample: dict[str, np.ndarray] | None, path: Path,
             cpus: str = "any") -> dict | None:
    """ONNX Runtime quantization: static QDQ in the `int8_form` for `cpus` (calibrated on `sample`), or dynamic."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    form = None
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        out = Path(tmp) / "quantized.onnx"
        if quantization == "dynamic":
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
        else:
            if sample is None:
                raise ValueError("static int8 needs a representative sample (a recipe, or --sample FILE.npz)")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self._batches = iter(calibration.rows(sample))

                def get_next(self):
                    return next(self._batches, None)

            form = int8_form(cpus=cpus)
            types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
            quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=types[form["activations"]], weight_type=types[form["weights"]],
                            per_channel=True, reduce_range=form["reduce_range"],
                            nodes_to_exclude=float_prefix(prepared) if calibration.needs_float_inputs(sample) else [])
        files.copy_file(out, path)
    return form and {"runtime": "ONNX Runtime CPU", **form, "verified_on": machine_class(),
                     "summary": f"{form['form']}{', reduce_range' if form['reduce_range'] else ''} for "
                                f"cpus={form['cpus']} ({form['correct_on']}; {form['why']}); verified on "
                                f"{machine_class()}"}


def machine_class(machine: str | None = None, cpu_flags: set[str] | None = None) -> str:
    """A CPU's class as the int8 forms see it: "x86-vnni", "x86" (no VNNI) or the machine's name (aarch64, ...)."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return machine
    flags = cpu.all_flags() if cpu_flags is None else cpu_flags
    return "x86-vnni" if flags & {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"} else "x86"


# --------------------------------------------------------------------------- runtime

class OnnxPredictor(Predictor):
    """An `.onnx` file on ONNX Runtime; session options are keyword arguments.

    threads / inter_op_threads: intra- and inter-op thread counts (0 = ORT's choice);
    optimization: "disable" | "basic" | "extended" | "all"; execution: "sequential" | "parallel";
    providers: ORT execution providers (default CPU);
    spinning: whether idle pool threads spin-wait for work (ORT's default, the lowest latency
    for one caller). `kerakit serve` turns it off for a model it runs on the event loop: a
    spinning thread holds a core that the loop and other requests need (digits_cnn over
    REST, ORT's 2 threads: 1,690 requests/s spinning, 2,800 not).
    """

    format = "onnx"

    def __init__(self, path: Path, threads: int = 0, inter_op_threads: int = 0, optimization: str = "all",
                 execution: str = "sequential", providers: list[str] | None = None, spinning: bool = True):
        super().__init__(path)
        import onnxruntime as ort

        options = _session_options(ort, threads, inter_op_threads, optimization, execution)
        if not spinning:
            for pool in ("intra_op", "inter_op"):
                options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
        try:
            # By its bytes where ORT could not take the name (non-ASCII under LANG=C; see errors.utf8_name).
            model = str(path) if utf8_name(path) else Path(path).read_bytes()
            self.session = ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise KerakitError(f"Cannot load ONNX model {str(path)!r}: {str(e)[:200]} (truncated or corrupt?).") from e
        self.inputs = [Spec(i.name, _shape(i.shape), TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
        self.outputs = [Spec(o.name, _shape(o.shape), TYPES.get(o.type, o.type)) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        _warn_if_not_for_this_cpu(path, self._metadata().get("int8_cpus"))

    def _metadata(self) -> dict:
        import json

        text = self.session.get_modelmeta().custom_metadata_map.get("kerakit")
        return json.loads(text) if text else {}

    def keras_outputs(self) -> list[str] | None:
        return self._metadata().get("outputs")

    def _run(self, batch):
        return dict(zip(self._output_names, self.session.run(self._output_names, batch)))


def _warn_if_not_for_this_cpu(path: Path, cpus: str | None) -> None:
    """One line when an int8 file made for VNNI CPUs (full 8-bit weights) runs where U8S8 pairs can saturate."""
    import sys

    if cpus == "x86-vnni" and machine_class() == "x86":
        print(f"warning: {path} is int8 for VNNI CPUs (cpus=x86-vnni: 8-bit weights), and this x86 CPU has no VNNI: "
              f"{saturation(int8_form(cpus=cpus))['why']}; its answers may be wrong here. Export with cpus=\"any\" "
              f"(the default) for this machine.", file=sys.stderr)


def _session_options(ort, threads: int, inter_op_threads: int, optimization: str, execution: str):
    if optimization not in OPTIMIZATION:
        raise KerakitError(f"Invalid optimization={optimization!r}. Expected one of {', '.join(OPTIMIZATION)}.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    return options


def _shape(shape) -> tuple:
    return tuple(d if isinstance(d, int) else None for d in shape)


def settings(threads: list[int]) -> dict[str, dict]:
    """Every graph optimization level x thread count; threads=0 is ORT's own choice (one per physical core)."""
    return {f"opt={level},threads={t or 'auto'}": {"optimization": level, "threads": t}
            for level in OPTIMIZATION for t in sorted({0, *threads})}


FORMAT = Format(
    name="onnx",
    suffix=".onnx",
    predictor=OnnxPredictor,
    variants=(Variant("none", "onnx", "model.onnx"),
              Variant("dynamic", "onnx-dynamic", "model_dynamic.onnx"),
              Variant("int8", "onnx-int8", "model_int8.onnx")),
    options={"opset": Option(DEFAULT_OPSET, check_opset, f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}"),
             "cpus": Option("any", check_cpus, f"int8: the CPUs the file must be right on, {' | '.join(CPU_CLASSES)}")},
    convert=convert,
    runtime_options=("threads", "inter_op_threads", "optimization", "execution", "providers", "spinning"),
    settings=settings,
    triton_platform="onnxruntime_onnx",
    layout="triton",
    repository_files=("model.onnx",),
    libraries=("tensorflow", "tf2onnx", "onnx", "onnxruntime"),
    preference=10,
)
