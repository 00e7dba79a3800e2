"""Faults a real machine has: two writers, SIGKILL anywhere, a full disk, torn or hand-edited files.

What each must leave: one `error:` line (no traceback), a run directory that
the same command repairs (no `rm` needed), and nothing reported verified that
is not. The README's fault table is this file.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kerakit
from conftest import KERAKIT, cli_in_process, run_cli
from kerakit import files, runs
from kerakit.errors import KerakitError


def _one_line(result, *fragments):
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _no_leftovers(path: Path) -> list[Path]:
    return [p for p in path.rglob(".*") if any(mark in p.name for mark in files.LEFTOVER_MARKS)]


# --------------------------------------------------------------------------- one writer per directory

def test_a_second_writer_is_refused_with_one_line_naming_the_first(tmp_path):
    out = tmp_path / "run"
    with files.writer(out, "kerakit train"):
        error = _one_line(run_cli("build", "digits_cnn", "--out", out))
        assert f"{out} is in use by pid {os.getpid()} (kerakit train, since " in error
    assert not (out / runs.CONFIG_FILE).exists(), "the refused writers wrote nothing"


def test_a_command_without_out_is_offered_what_it_can_do_instead(tmp_path):
    """`kerakit report` writes into the run it is given (it has no --out): its lines do not offer one."""
    code = (f"from kerakit import files\nwith files.writer({str(tmp_path)!r}, 'kerakit train'):\n"
            "    print('held', flush=True)\n    input()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(KerakitError, match=r"\(kerakit train, since [0-9:]+\)\. Wait for it to finish\.$"):
            with files.writer(tmp_path, "kerakit report", has_out=False):
                pass
        with pytest.raises(KerakitError, match=r"Wait for it to finish, or use another --out\.$"):
            with files.writer(tmp_path, "kerakit export"):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(KerakitError, match=r"Make it writable, or copy the run somewhere writable\.$"):
        files.writer(tmp_path / "a-file" / "run", "kerakit report", has_out=False).__enter__()
    with pytest.raises(KerakitError, match=r"Pass a writable --out DIR\.$"):
        files.writer(tmp_path / "a-file" / "run", "kerakit export").__enter__()


def test_the_lock_is_reentrant_in_one_process_and_released_with_it(tmp_path):
    with files.writer(tmp_path, "kerakit build"):
        with files.writer(tmp_path, "kerakit train"):  # build holds it while train runs inside
            pass
    code = f"from kerakit import files\nwith files.writer({str(tmp_path)!r}, 'x'):\n    print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "ok\n"


def test_what_a_killed_writer_left_is_removed_by_the_next_one(tmp_path):
    (tmp_path / "export" / ".staging-abc").mkdir(parents=True)
    (tmp_path / ".model.x1.tmp.keras").write_bytes(b"half")
    (tmp_path / "report").mkdir()
    (tmp_path / ".report.x2.tmp").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with files.writer(tmp_path, "kerakit export"):
        pass
    assert _no_leftovers(tmp_path) == [] and (tmp_path / "notes.txt").exists()


# --------------------------------------------------------------------------- trust nothing without its hash

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A short, finished build (server target): the state every repair below starts from."""
    out = tmp_path_factory.mktemp("faults") / "digits"
    r = run_cli("build", "digits_cnn", "epochs=2", "--target", "server", "--out", out, "--bench-runs", "5",
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _copy(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "digits"
    shutil.copytree(built, out)
    return out


def _export(out):
    from kerakit.export import export

    return export(out, log=lambda m: None)


def _report(out):
    from kerakit.report import report

    return report(out, log=lambda m: None)


def _bench(out):
    from kerakit.bench import bench

    return bench([out], batches=[1], threads=[1], runs_=5, warmup=1, log=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("relative, content, call, fragments", [
    ("manifest.json", "[]", _export, ["manifest.json holds a JSON list", "delete it"]),
    ("manifest.json", "{}", _export, ["manifest.json lacks 'artifacts'"]),
    ("config.json", "{", kerakit.evaluate, ["config.json is not valid JSON", "train again"]),
    ("export/export_report.json", "garbage", _report, ["export_report.json is not an export report",
                                                       "export again"]),
    ("export/runtime.json", "garbage", _bench, ["runtime.json is not valid JSON", "re-run the runtime settings"]),
    ("bench/bench.json", "[1]", _report, ["bench.json holds a JSON list", "rerun `kerakit bench`"]),
], ids=["manifest-list", "manifest-empty", "config-garbage", "export-report-garbage", "runtime-settings-garbage",
        "bench-result-list"])
def test_a_corrupt_run_file_is_named_with_what_to_do(built, tmp_path, relative, content, call, fragments):
    out = _copy(built, tmp_path)
    (out / relative).write_text(content)
    with pytest.raises(KerakitError) as error:
        call(out)
    for fragment in (str(out / relative), *fragments):
        assert fragment in str(error.value)


@pytest.mark.slow
def test_a_corrupt_file_is_one_line_on_the_command_line(built, tmp_path):
    out = _copy(built, tmp_path)
    (out / "manifest.json").write_text("garbage")
    _one_line(run_cli("export", out), f"{out / 'manifest.json'} is not valid JSON (line 1)", "delete it")


@pytest.mark.slow
@pytest.mark.parametrize("relative, said", [
    ("build.json", "build.json is not valid JSON (line 1); exporting and benching again"),
    ("export/export_report.json", "export: export_report.json is not an export report (Expecting value: line 1 "
                                  "column 1 (char 0)): exporting again"),
], ids=["build-state", "export-report"])
def test_build_repairs_its_own_garbage_record_files_itself(built, tmp_path, relative, said):
    """What `kerakit export` would rewrite, `build` rewrites too: no `rm` asked of the user."""
    from kerakit.build import build
    from kerakit.export import ExportReport

    out = _copy(built, tmp_path)
    (out / relative).write_text("garbage")
    lines = []
    result = build("digits_cnn", targets=["server"], out=out, bench_runs=5, epochs=2, log=lines.append)
    assert said in "\n".join(lines)
    assert result["steps"]["train"]["status"] == "already done"
    assert result["steps"]["export"]["status"] == "2 of 2 artifacts verified"
    assert ExportReport.read(out / "export").passed and json.loads((out / "build.json").read_text())["export"]


@pytest.mark.slow
def test_a_missing_or_changed_artifact_is_rebuilt_and_never_reported_verified(built, tmp_path):
    out = _copy(built, tmp_path)
    (out / "export" / "model.onnx").unlink()
    from kerakit.report import deployment_rows

    onnx = next(r for r in deployment_rows(runs.Run(out)) if r["artifact"] == "onnx")
    assert onnx["verdict"] == "failed" and onnx["reasons"] == ["model.onnx missing: export again"]
    r = cli_in_process("build", "digits_cnn", "epochs=2", "--target", "server", "--out", out, "--bench-runs", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "export: model.onnx missing: exporting again" in r.stdout
    assert "   train: already done" in r.stdout
    report = json.loads((out / "export" / "export_report.json").read_text())
    assert all(files.intact(Path(a["path"]), a["sha256"]) for a in report["artifacts"])


@pytest.mark.slow
def test_a_damaged_model_is_trained_again_not_trusted(built, tmp_path):
    out = _copy(built, tmp_path)
    data = (out / "model.keras").read_bytes()
    (out / "model.keras").write_bytes(data[: len(data) // 2])
    run = kerakit.train("digits_cnn", out, epochs=2, verbose=0, log=lambda m: None)
    assert run.verify_artifacts() == {name: True for name in run.manifest["artifacts"]}
    assert run.metrics["accuracy"] == pytest.approx(json.loads((built / "metrics.json").read_text())["accuracy"])


# --------------------------------------------------------------------------- SIGKILL and torn files

def _start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([*KERAKIT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL `proc` as soon as ready() holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("timed out waiting to kill")


@pytest.mark.slow
def test_a_torn_training_backup_resumes_from_the_previous_epoch_or_starts_over(tmp_path):
    out = tmp_path / "run"
    args = ["train", "digits_cnn", "epochs=6", "patience=100", "--out", out]
    proc = _start(*args)
    assert _kill_when(proc, lambda: (out / "backup" / "training_metadata.json.bkp").exists())
    latest = out / "backup" / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:5000])  # torn: as after a kill or a full disk mid-write
    r = cli_in_process(*args)  # the same command, in this process: 7-13 s less TensorFlow start-up
    assert r.returncode == 0, r.stderr[-2000:]
    assert "latest.weights.h5 is damaged or incomplete; resuming from the previous epoch's backup" in r.stdout

    out2 = tmp_path / "run2"
    proc = _start(*args[:-1], out2)
    assert _kill_when(proc, lambda: (out2 / "backup" / "training_metadata.json").exists())
    for name in ("latest.weights.h5", "training_metadata.json"):
        (out2 / "backup" / name).write_bytes(b"\x00garbage")
    r = cli_in_process(*args[:-1], out2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training backup" in r.stdout and "is damaged; training starts over from epoch 0" in r.stdout


@pytest.mark.slow
def test_a_kill_after_the_last_epoch_does_not_train_again(tmp_path):
    out = tmp_path / "run"
    args = ["train", "digits_cnn", "epochs=3", "--out", out]
    proc = _start(*args)
    killed = _kill_when(proc, lambda: (out / "backup" / "fit_done.json").exists())
    assert killed and not (out / "manifest.json").exists(), "killed between fit and the manifest"
    r = cli_in_process(*args)  # the same command, in this process: 7-13 s less TensorFlow start-up
    assert r.returncode == 0, r.stderr[-2000:]
    assert "had finished training (3 epochs) before it was interrupted; recording it" in r.stdout
    assert "Epoch 1/3" not in r.stdout
    run = runs.Run.open(out)
    assert all(run.verify_artifacts().values()) and not run.backup_dir.exists()


def _when_printed(proc: subprocess.Popen, prefix: str) -> list[float]:
    """A list that gets the time `proc` printed a line starting with `prefix` (read on a thread)."""
    import threading

    seen: list[float] = []

    def read():
        for line in proc.stdout:
            if not seen and line.startswith(prefix):
                seen.append(time.monotonic())

    threading.Thread(target=read, daemon=True).start()
    return seen


PHASES = ("── [1/4] train", "── [2/4] export", "── [3/4] bench", "── [4/4] report")


@pytest.mark.slow
def test_sigkill_at_eight_seeded_points_of_a_build_recovers_to_a_whole_run(built, tmp_path):
    """Two kills in each phase, at seeded delays after the phase starts; then the build finishes.

    Tolerance: a kill during training resumes from the last epoch's backup,
    and tf.data restarts its reshuffling there, so later epochs see another
    order than an uninterrupted run: the test accuracy may differ by up to
    0.03 (two of the 360 test digits are ~0.006). Every other step is redone
    from a model with a known hash, so verdicts and hashes must match exactly.
    """
    rng = random.Random(20261125)
    args = ["build", "digits_cnn", "epochs=2", "--target", "server", "--bench-runs", "5"]  # as `built`
    out = tmp_path / "killed"
    kills = 0
    for phase in [p for p in PHASES for _ in range(2)]:
        proc, delay = _start(*args, "--out", out), rng.uniform(0.0, 1.5)
        started = _when_printed(proc, phase)
        kills += _kill_when(proc, lambda: started and time.monotonic() - started[0] >= delay)
    assert kills >= 6, f"only {kills} of 8 kills landed before the build finished"
    r = run_cli(*args, "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    run, ref = runs.Run.open(out), runs.Run.open(built)  # `built`: the same build, never interrupted
    assert all(run.verify_artifacts().values())
    export = json.loads(run.export_report.read_text())
    assert [a["verdict"] for a in export["artifacts"]] == ["verified", "verified"]
    assert all(files.intact(Path(a["path"]), a["sha256"]) for a in export["artifacts"])
    assert json.loads(run.bench_result.read_text())["rows"] and (run.report_dir / "index.html").exists()
    assert abs(run.metrics["accuracy"] - ref.metrics["accuracy"]) <= 0.03
    assert _no_leftovers(out) == []


# --------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root can mount one here and in CI); grown with `grow()` to free space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_the_rerun_finishes(small_disk):
    mount, grow = small_disk
    args = ["train", "digits_cnn", "epochs=2", "--out", mount / "run"]
    _one_line(run_cli(*args, timeout=600), "No space left on device", "rerun the same command")
    grow()
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = runs.Run.open(mount / "run")
    assert all(run.verify_artifacts().values()) and _no_leftovers(mount) == []


@pytest.mark.slow
def test_a_full_disk_during_export_fails_the_build_and_the_rerun_retries_it(small_disk, built):
    mount, grow = small_disk
    grow()
    out = _copy(built, mount)
    (out / "export" / "model.onnx").unlink()
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    filler.write_bytes(np.zeros(free - 200_000, np.uint8).tobytes())  # 200 KB left: less than model.onnx
    args = ["build", "digits_cnn", "epochs=2", "--target", "server", "--out", out, "--bench-runs", "5"]
    r = run_cli(*args, timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len([line for line in r.stderr.splitlines() if line.startswith("error: ")]) == 1, r.stderr
    filler.unlink()
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exporting again" in r.stdout
    export = json.loads((out / "export" / "export_report.json").read_text())
    assert [a["verdict"] for a in export["artifacts"]] == ["verified", "verified"]


# --------------------------------------------------------------------------- smaller points

def test_directories_kerakit_writes_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with files.atomic_dir(tmp_path / "savedmodel") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "savedmodel").stat().st_mode & 0o777 == 0o755


def test_more_threads_than_cores_is_refused():
    from kerakit import runtime

    cores = len(os.sched_getaffinity(0))
    assert runtime.check_threads(cores) == cores
    with pytest.raises(KerakitError, match=rf"Invalid threads=999: this process may use {cores} core"):
        runtime.check_threads(999)
