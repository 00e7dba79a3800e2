"""deployment.json records the machine it was measured on; `runtime.load(RUN)` and `kerakit serve RUN` on another
machine (other ISA flags, fewer cores, or an unknown one) say so in one line and re-bench (bounded) or pick by rule,
never silently the old pick and never an unverified file. Also bench's honest picks."""

import json
import shutil
import time

import pytest
import requests

from conftest import Server
from kerakit import cpu, deployment, runs, runtime
from kerakit.bench import bench
from kerakit.errors import KerakitError


@pytest.fixture(autouse=True)
def reverify_cache(tmp_path, monkeypatch):
    """The re-verifications a changed machine makes, kept per test (the machine's own cache is ~/.cache/kerakit)."""
    monkeypatch.setenv("KERAKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def benched(digits_run, digits_export, tmp_path_factory):
    """The session's digits run with the session's export (server, edge, LiteRT fp32) as its own, benched here."""
    path = tmp_path_factory.mktemp("machine") / "digits"
    shutil.copytree(digits_run.path, path, ignore=shutil.ignore_patterns("export", "bench", "deployment.json"))
    shutil.copytree(digits_export[0], path / "export")
    bench([path], batches=[1, 8], threads=[1], runs_=40, warmup=2, budget_s=0.2, log=lambda m: None)
    return runs.Run(path)


@pytest.fixture
def run(benched, tmp_path):
    """A copy each test may edit."""
    return runs.Run(shutil.copytree(benched.path, tmp_path / "digits"))


def _edit(run: runs.Run, **machine) -> dict:
    """Rewrite deployment.json as if measured on another machine; every pick: ONNX fp32 on 1 thread."""
    book = json.loads(run.deployment.read_text())
    book["machine"].update(machine)
    for choice in book["batches"].values():
        choice.update(artifact="model.onnx", format="onnx", setting="opt=all,threads=1",
                      options={"optimization": "all", "threads": 1})
    run.deployment.write_text(json.dumps(book))
    return book


def _other_flags() -> list[str]:
    """An ISA flag set this machine does not have: every tracked flag flipped."""
    return [f for f in cpu.FLAGS if f not in cpu.flags()]


def test_deployment_json_records_the_cpu_its_flags_and_the_usable_cores(benched):
    written = json.loads(benched.deployment.read_text())["machine"]
    assert written["cpu"] == cpu.model() and written["flags"] == cpu.flags() and written["cores"] == cpu.cores()
    assert set(written["flags"]) <= set(cpu.FLAGS)
    for choice in json.loads(benched.deployment.read_text())["batches"].values():
        assert isinstance(choice["decided"], bool) and choice["precision"] is not None
        assert choice["artifact"] in deployment.candidates(benched)


def test_on_the_machine_it_was_measured_on_the_picks_are_used_without_a_word(benched, capsys):
    choice = json.loads(benched.deployment.read_text())["batches"]["1"]
    with runtime.load(benched.path) as p:
        assert p.path.name == choice["artifact"]
    assert capsys.readouterr().err == ""


def test_other_isa_flags_are_named_in_one_line_and_the_rule_picks_verified_litert_on_one_thread(run, capsys):
    _edit(run, flags=_other_flags())
    with runtime.load(run.path) as p:
        assert p.format == "tflite" and p.path.name == "model_fp32.tflite"
        assert p._threads == deployment.rule_threads(cpu.cores())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "measured on another machine" in err[0] and "ISA flags" in err[0]
    assert all(f"+{f}" in err[0] for f in cpu.flags()) and "rule: model_fp32.tflite" in err[0]


def test_fewer_cores_than_the_picks_used_is_another_machine(run, capsys):
    book = _edit(run, cores=cpu.cores() + 6)
    for choice in book["batches"].values():
        choice["options"]["threads"] = 0  # ORT's own choice: every core of the machine it was measured on
    run.deployment.write_text(json.dumps(book))
    with runtime.load(run.path, batch=8) as p:
        assert p.path.name == "model_fp32.tflite"
    err, = capsys.readouterr().err.splitlines()
    assert f"{cpu.cores()} core(s) here, its picks use {cpu.cores() + 6}" in err


def test_a_deployment_without_cpu_fields_is_an_unknown_machine(run, capsys):
    book = _edit(run)
    del book["machine"]["flags"]
    run.deployment.write_text(json.dumps(book))
    with runtime.load(run.path) as p:
        assert p.path.name == "model_fp32.tflite"
    err, = capsys.readouterr().err.splitlines()
    assert "unknown machine" in err and "rule: model_fp32.tflite" in err


def test_another_cpu_name_with_the_same_flags_keeps_the_picks_and_says_so(run, capsys):
    _edit(run, cpu="Some Other CPU")
    with runtime.load(run.path) as p:
        assert p.path.name == "model.onnx"  # the same kernels run: the measured pick stands
    err, = capsys.readouterr().err.splitlines()
    assert "'Some Other CPU' there" in err and "same ISA flags" in err and "using its picks" in err


def test_the_rule_never_names_an_unverified_artifact(run, capsys):
    _edit(run, flags=_other_flags())
    fp32 = run.export_dir / "model_fp32.tflite"
    data = bytearray(fp32.read_bytes())
    data[-1] ^= 0xFF
    fp32.write_bytes(bytes(data))  # one byte changed since it was verified
    with runtime.load(run.path) as p:
        assert p.format == "tflite" and p.path.name != "model_fp32.tflite"
        assert p.path.name in deployment.candidates(run)
    assert "model_fp32.tflite" not in capsys.readouterr().err


def test_a_pick_naming_an_unverified_artifact_is_refused_on_any_machine(run):
    book = _edit(run, cpu="Some Other CPU")  # picks kept: then checked
    (run.export_dir / "model.onnx").write_bytes(b"not the verified bytes")
    with pytest.raises(KerakitError, match="names 'model.onnx', which is no longer a verified artifact"):
        runtime.load(run.path)
    assert book["batches"]["1"]["artifact"] == "model.onnx"


def test_rebench_measures_a_new_pick_within_its_bound_and_records_this_machine(run, capsys):
    _edit(run, flags=_other_flags())
    started = time.perf_counter()
    with runtime.load(run.path, rebench=6) as p:
        elapsed = time.perf_counter() - started
        written = json.loads(run.deployment.read_text())
        assert p.path.name == written["batches"]["1"]["artifact"]
    assert written["machine"]["flags"] == cpu.flags() and written["stop_rule"]["rebench_s"] == 6
    assert set(written["batches"]) == {"1", "8"}
    for choice in written["batches"].values():
        assert choice["artifact"] in deployment.candidates(run) and choice["format"] != "savedmodel"
        assert choice["stopped"] in ("precise", "budget", "calls", "pruned", "deadline")
    err, = capsys.readouterr().err.splitlines()
    spent = float(err.split("re-benched here in ")[1].split(" s")[0])
    assert spent <= 6 and elapsed <= 6 + 2  # the bound, and then opening the pick
    with runtime.load(run.path):  # measured here now: no line
        pass
    assert capsys.readouterr().err == ""


def test_serve_of_a_run_from_another_machine_says_so_and_serves_the_rule(run, tmp_path):
    _edit(run, flags=_other_flags())
    server = Server(run.path, "--no-grpc", log_dir=tmp_path)
    try:
        metadata = requests.get(f"{server.url}/v2/models/digits_cnn", timeout=10).json()
    finally:
        server.stop()
    lines = [l for l in server.stderr_path.read_text().splitlines() if "deployment.json" in l]
    assert len(lines) == 1 and "measured on another machine" in lines[0] and "--rebench" in lines[0], lines
    assert metadata["platform"] == "tensorflow_tflite"  # LiteRT, not the ONNX file it recorded
    assert f"{run.export_dir / 'model_fp32.tflite'}" in server.stderr_path.read_text()  # the banner's path


def test_serve_rebench_measures_here_before_serving(run, tmp_path):
    _edit(run, flags=_other_flags())
    server = Server(run.path, "--no-grpc", "--rebench", log_dir=tmp_path)
    try:
        metadata = requests.get(f"{server.url}/v2/models/digits_cnn", timeout=10).json()
    finally:
        server.stop()
    line, = [l for l in server.stderr_path.read_text().splitlines() if "deployment.json" in l]
    assert "re-benched here in" in line
    written = json.loads(run.deployment.read_text())
    assert written["machine"]["flags"] == cpu.flags()
    platform = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_tflite"}
    assert metadata["platform"] == platform[written["batches"]["1"]["format"]]


def test_honest_pick_takes_the_simpler_setting_when_intervals_overlap():
    from kerakit import formats

    onnx = formats.get("onnx")
    configs = {("model.onnx", "threads=2"): (None, onnx, {"threads": 2}),
               ("model.onnx", "threads=1"): (None, onnx, {"threads": 1})}

    def stats(p50, low, high):
        return {"p50_ms": p50, "interval_ms": [low, high], "precision": round((high - low) / 2 / p50, 3),
                "stopped": "budget", "throughput_per_s": 1 / p50}

    overlapping = {("model.onnx", "threads=2"): stats(1.0, 0.5, 1.5), ("model.onnx", "threads=1"): stats(1.2, 0.9, 1.6)}
    pick = deployment.decide(overlapping, configs)
    assert (pick["setting"], pick["decided"], pick["tied"]) == ("threads=1", False, ["model.onnx (threads=2)"])
    apart = {("model.onnx", "threads=2"): stats(1.0, 0.95, 1.05), ("model.onnx", "threads=1"): stats(1.2, 1.1, 1.3)}
    pick = deployment.decide(apart, configs)
    assert (pick["setting"], pick["decided"], pick["tied"]) == ("threads=2", True, [])


def test_a_files_default_setting_is_the_one_on_fewer_threads_where_the_figures_cannot_tell_them_apart():
    from kerakit.bench import _best_setting

    def stats(p50, half):
        return {"p50_ms": p50, "interval_ms": [p50 - half, p50 + half]}

    configs = {"threads=1": {"threads": 1}, "threads=2": {"threads": 2}}
    close = {1: {"threads=1": stats(1.1, 0.2), "threads=2": stats(1.0, 0.2)},
             32: {"threads=1": stats(10.5, 1.0), "threads=2": stats(10.0, 1.0)}}
    assert _best_setting(close, [1, 32], configs)[0::2] == ("threads=1", ["threads=2"])
    apart = {**close, 32: {"threads=1": stats(20.0, 1.0), "threads=2": stats(10.0, 1.0)}}  # 2 threads: 2x at b32
    assert _best_setting(apart, [1, 32], configs)[0::2] == ("threads=2", [])
