"""`kerakit build`: the whole job in one command — train (or tune, then train), export and
verify, bench, report — and a rerun that redoes only what changed."""

import json

import pytest

from conftest import cli_in_process, run_cli
from kerakit.errors import KerakitError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`kerakit build digits_cnn` (short), as a user runs it."""
    out = tmp_path_factory.mktemp("build") / "digits"
    r = run_cli("build", "digits_cnn", "epochs=4", "--out", out, "--bench-runs", "20", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_build_ends_with_a_verified_deployment_table_and_the_report_path(built):
    out, stdout = built
    assert f"report: {out / 'report' / 'index.html'}" in stdout
    table = stdout[stdout.index("deployment"):]
    for artifact in ("keras", "savedmodel", "onnx", "tflite-int8", "tflite-fp16", "onnx-int8"):
        assert f" {artifact} " in table
    assert table.count("verified") == 5 and "FAILED" not in table
    for name in ("model_card.md", "index.html", "curves.png", "confusion.png", "saliency.png"):
        assert (out / "report" / name).stat().st_size > 0
    assert (out / "data_profile.json").exists()
    assert (out / "bench" / "bench.json").exists() and (out / "export" / "export_report.json").exists()


@pytest.mark.slow
def test_build_rerun_resumes_every_finished_step(built):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in [out / "model.keras", out / "export" / "model.onnx", out / "bench" / "bench.json"]}
    # The reruns in this process (cli_in_process): the same command, without 7-13 s of TensorFlow start-up each.
    r = cli_in_process("build", "digits_cnn", "epochs=4", "--out", out, "--bench-runs", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    for step in ("train", "export", "bench"):
        assert f"   {step}: already done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    r = cli_in_process("build", "digits_cnn", "epochs=5", "--out", out)
    assert r.returncode == 1 and "changed: epochs" in r.stderr and "or --overwrite to replace it" in r.stderr
    r = cli_in_process("build", "digits_cnn", "epochs=5", "--out", out, "--bench-runs", "5", "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]  # the option the line advised: trained, exported, benched again
    assert "   train: already done" not in r.stdout and "export: the model changed since the last export" in r.stdout
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 5


def test_build_needs_an_export_target(tmp_path):
    from kerakit.build import build

    with pytest.raises(KerakitError, match=r"No export target: pass --target, e.g. server,edge"):
        build("digits_cnn", targets=[" ", ""], out=tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == [], "refused before anything was written"


def test_build_with_a_tuner_that_needs_an_epoch_budget_names_builds_own_option(tmp_path):
    from kerakit.build import build

    with pytest.raises(KerakitError, match=r"^--tune hyperband needs --max-epochs \(the budget that bounds its "):
        build("digits_cnn", tune="hyperband", out=tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == [], "refused before anything was written"


@pytest.mark.slow
def test_build_with_tune_searches_then_trains_the_best(tmp_path):
    out = tmp_path / "tuned"
    r = run_cli("build", "digits_cnn", "epochs=2", "--tune", "random", "--max-trials", "2", "--target", "server",
                "--out", out, "--bench-runs", "10", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "── [1/5] tune: random, 2 trials" in r.stdout
    best = json.loads((out / "search" / "best_hparams.json").read_text())
    trained = json.loads((out / "config.json").read_text())["hparams"]
    assert best and all(trained[k] == v for k, v in best.items())
    assert (out / "report" / "index.html").exists() and (out / "export" / "model.onnx").exists()


@pytest.mark.slow
def test_build_with_an_artifact_that_fails_verification_exits_1_after_writing_the_report(tmp_path):
    """A tolerance no float conversion meets: the build still benches and reports, then fails like export."""
    strict = tmp_path / "strict.toml"
    strict.write_text('[[artifacts]]\nformat = "onnx"\n[verify]\natol = 0\nrtol = 0\n')
    out = tmp_path / "digits"
    r = run_cli("build", "digits_cnn", "epochs=1", "--target", strict, "--out", out, "--bench-runs", "5", timeout=600)
    assert r.returncode == 1, r.stdout[-2000:]
    assert "error: 1 of 1 artifacts failed verification (onnx)" in r.stderr
    assert f"The report shows them: {out / 'report' / 'index.html'}" in r.stderr
    assert "Traceback" not in r.stderr
    table = r.stdout[r.stdout.index("deployment"):]
    assert " onnx " in table and "failed" in table
    card = (out / "report" / "model_card.md").read_text()
    assert "artifact onnx: failed (max abs error" in card
    assert json.loads((out / "export" / "export_report.json").read_text())["passed"] is False

    again = cli_in_process("build", "digits_cnn", "epochs=1", "--target", strict, "--out", out, "--bench-runs", "5")
    assert again.returncode == 1 and "   export: onnx failed verification: exporting again" in again.stdout


def test_build_refuses_clashing_targets_before_training(tmp_path):
    """Two targets asking for model.onnx with different opsets: one line, before any training."""
    from kerakit.build import build

    (tmp_path / "old_onnx.toml").write_text('[[artifacts]]\nformat = "onnx"\nopset = 13\n')
    out = tmp_path / "digits"
    with pytest.raises(KerakitError, match=r"^target 'server' and target 'old_onnx' ask for onnx \(model.onnx\) "
                                           r"with different options: opset=17 against opset=13\."):
        build("digits_cnn", targets=["server", str(tmp_path / "old_onnx.toml")], out=out, log=lambda m: None)
    assert not out.exists()


@pytest.mark.slow
def test_build_exports_again_when_a_targets_content_or_an_artifacts_bytes_change(tmp_path):
    """Build remembers its export by what the targets hold, not their names, and by the artifacts' SHA-256."""
    from kerakit.build import build

    target = tmp_path / "mine.toml"
    target.write_text('[[artifacts]]\nformat = "onnx"\n')
    out, logged = tmp_path / "digits", []
    again = lambda: build("digits_cnn", targets=[str(target)], out=out, bench_runs=5, epochs=1,  # noqa: E731
                          log=logged.append)
    again()
    assert not (out / "export" / "savedmodel").exists()
    target.write_text('[[artifacts]]\nformat = "onnx"\n[[artifacts]]\nformat = "savedmodel"\n')  # same name
    logged.clear()
    result = again()
    assert "   export: target mine changed since the last export: exporting again" in logged
    assert result["steps"]["export"]["status"] == "2 of 2 artifacts verified" and (out / "export" / "savedmodel").is_dir()
    assert again()["steps"]["export"]["status"] == "already done"  # unchanged: not exported a third time

    onnx = out / "export" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # one byte changed, same size
    onnx.write_bytes(bytes(data))
    logged.clear()
    again()
    assert "   export: model.onnx changed since it was verified: exporting again" in logged
    from kerakit.export import ExportReport

    assert [r.artifact for r in ExportReport.read(out / "export").still_verified()] == ["onnx", "savedmodel"]
