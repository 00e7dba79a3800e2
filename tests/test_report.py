"""`kerakit build`, the report (rendered in real headless Chromium), slices,
attributions, and `kerakit drift` on raw inputs and on a server request log."""

import json
import os

import numpy as np
import pytest
import requests

from conftest import ROOT, run_cli


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


def test_build_rerun_resumes_every_finished_step(built):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in [out / "model.keras", out / "export" / "model.onnx", out / "bench" / "bench.json"]}
    r = run_cli("build", "digits_cnn", "epochs=4", "--out", out, "--bench-runs", "20", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for step in ("train", "export", "bench"):
        assert f"   {step}: already done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    r = run_cli("build", "digits_cnn", "epochs=5", "--out", out, timeout=120)
    assert r.returncode == 1 and "changed: epochs" in r.stderr


def test_report_renders_in_headless_chromium_with_its_images(built, tmp_path):
    from playwright.sync_api import sync_playwright

    out, _ = built
    chromium = os.environ.get("KERAKIT_CHROMIUM", "/usr/bin/chromium")
    assert os.path.exists(chromium), f"{chromium} missing: `make test` installs Debian's chromium"
    page_file = out / "report" / "index.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requested = []
        page.on("request", lambda req: requested.append(req.url))
        page.goto(page_file.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        deployment = page.evaluate("""Array.from(document.querySelectorAll('table')).map(t => t.innerText)
                                      .find(t => t.includes('p50 ms (batch 1)'))""")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert {alt for alt, *_ in images} == {"training curves", "confusion matrix", "saliency"}
    assert all(complete and w > 100 and h > 100 for _, complete, w, h in images), images
    assert [r for r in requested if not r.startswith(("file:", "data:"))] == []  # self-contained
    for section in ("Summary", "Data", "Hyperparameters", "Training", "Test metrics", "Slices", "Interpretability",
                    "Deployment", "Reproducibility", "Library versions"):
        assert section in headings
    assert deployment.count("verified") == 5
    shot = (tmp_path / "report.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000


def test_model_card_names_data_hparams_slices_and_versions(built):
    out, _ = built
    md = (out / "report" / "model_card.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["sha256"]["train"][:16] in md
    assert "| learning_rate | 0.003 |" in md and "| epochs | 4 |" in md
    assert "faint (mean ink < 0.26)" in md and "heavy (mean ink >= 0.35)" in md
    assert f"| tensorflow | {manifest['versions']['tensorflow']} |" in md
    assert "![confusion matrix](confusion.png)" in md


def test_tabular_report_has_permutation_importance_and_flags_a_weak_slice(tmp_path):
    import kerakit
    from kerakit.report import report

    recipe = tmp_path / "cancer.py"
    text = (ROOT / "recipes" / "breast_cancer_mlp.py").read_text()
    # One slice that must be flagged: every example, with a margin below zero.
    recipe.write_text(text + '\nSLICES = {**SLICES, "everything": lambda f, y: f["features"][:, 0] > -1, '
                             '"broken": lambda f, y: 1 / 0}\nSLICE_MARGIN = -0.5\n')
    run = kerakit.train(recipe, tmp_path / "run", epochs=8, verbose=0, log=lambda m: None)
    result = report(run.path, log=lambda m: None)
    md = (run.path / "report" / "model_card.md").read_text()
    assert (run.path / "report" / "importance.png").stat().st_size > 0
    assert "Permutation importance of `features`" in md and "mean radius" in md
    assert "slice 'everything'" in " ".join(result["flags"])
    assert "slice 'broken': ZeroDivisionError" in " ".join(result["flags"])  # a recipe bug is shown, not fatal
    assert "| mean radius > 15 |" in md


@pytest.fixture(scope="module")
def test_inputs(built):
    from kerakit.data import load_data
    from kerakit.runs import Run

    run = Run.open(built[0])
    x, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    return x["image"]


def test_drift_passes_held_out_data_and_catches_a_shift(built, test_inputs, tmp_path):
    out, _ = built
    np.savez(tmp_path / "same.npz", image=test_inputs)
    np.savez(tmp_path / "shifted.npz", image=np.clip(test_inputs * 0.6 + 0.25, 0, 1))  # washed-out scans
    same = run_cli("drift", out, "--data", tmp_path / "same.npz", "--json")
    assert same.returncode == 0, same.stderr
    assert not json.loads(same.stdout)["drift"]
    shifted = run_cli("drift", out, "--data", tmp_path / "shifted.npz")
    assert shifted.returncode == 3, shifted.stderr
    assert "DRIFT" in shifted.stdout and "image.mean" in shifted.stdout.splitlines()[-1]


def test_drift_reads_the_server_request_log(built, test_inputs, tmp_path):
    from test_serve import Server

    out, _ = built
    logs = {}
    for name, x in (("same", test_inputs), ("shifted", np.clip(test_inputs * 0.6 + 0.25, 0, 1))):
        logs[name] = tmp_path / f"{name}.jsonl"
        server = Server(out, "--log", logs[name], log_dir=tmp_path)
        try:
            for i in range(0, len(x), 8):  # the way traffic arrives: many small requests
                r = requests.post(f"{server.url}/v1/models/digits_cnn:predict", json={"instances": x[i:i + 8].tolist()})
                assert r.status_code == 200
        finally:
            server.stop()
    same = run_cli("drift", out, "--data", logs["same"])
    assert same.returncode == 0 and "no drift" in same.stdout, same.stdout + same.stderr
    assert "360 rows from 45 logged requests" in same.stdout
    shifted = run_cli("drift", out, "--data", logs["shifted"])
    assert shifted.returncode == 3 and "DRIFT" in shifted.stdout


def test_a_profile_from_an_older_kerakit_is_recomputed(built, test_inputs, tmp_path):
    out, _ = built
    profile = json.loads((out / "data_profile.json").read_text())
    stale = {**profile, "version": 1, "series": {k: {**v, "proportions": [1.0] + [0.0] * (len(v["proportions"]) - 1)}
                                                  for k, v in profile["series"].items()}}
    (out / "data_profile.json").write_text(json.dumps(stale))
    np.savez(tmp_path / "same.npz", image=test_inputs)
    r = run_cli("drift", out, "--data", tmp_path / "same.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "data_profile.json").read_text()) == profile


@pytest.mark.parametrize("data, fragment", [
    ("missing.jsonl", "does not exist"),
    ("bad.jsonl", "bad.jsonl:1 is not a `kerakit serve` request log record"),
    ("wrong.npz", "holds arrays ['pixels']; the model's inputs are ['image']"),
    ("few.npz", "has 5 rows; a drift check needs at least 30"),
    ("inputs.txt", "Unsupported drift data"),
])
def test_drift_bad_data_is_one_clear_line(built, tmp_path, data, fragment):
    (tmp_path / "bad.jsonl").write_text('{"not": "a record"}\n')
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((40, 8, 8, 1), np.float32))
    np.savez(tmp_path / "few.npz", image=np.zeros((5, 8, 8, 1), np.float32))
    (tmp_path / "inputs.txt").write_text("1,2\n")
    r = run_cli("drift", built[0], "--data", tmp_path / data)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_report_of_a_missing_run_is_one_line(tmp_path):
    r = run_cli("report", tmp_path / "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr


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
