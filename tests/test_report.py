"""`kerakit report`: the model card (rendered in real headless Chromium), slices and
attributions judged by the recipe's own metric, and the deployment table.

`kerakit build`'s own tests are in test_build.py, `kerakit drift`'s in test_drift.py."""

import json
import os

import pytest

from conftest import ROOT, cli_in_process


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A short digits run, exported for server and edge, then reported.

    Four epochs, as `kerakit build`'s test: after three, onnx-int8 may lose more than its allowed point."""
    import kerakit
    from kerakit.export import export
    from kerakit.report import report

    out = tmp_path_factory.mktemp("report") / "digits"
    kerakit.train("digits_cnn", out, epochs=4, verbose=0, log=lambda m: None)
    export(out, targets=["server", "edge"], log=lambda m: None)
    before = _files(out)
    result = report(out, log=lambda m: None)
    return out, result, before


def _files(run) -> dict:
    """Every file of a run outside report/, with its bytes (not the writer lock, which names its holder)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.relative_to(run).parts[0] != "report" and p.name != ".kerakit.lock"}


def test_report_writes_the_card_and_its_figures_and_nothing_else(reported):
    out, result, before = reported
    assert result["html"] == str(out / "report" / "index.html")
    assert result["markdown"] == str(out / "report" / "model_card.md")
    for name in ("model_card.md", "index.html", "curves.png", "confusion.png", "saliency.png"):
        assert (out / "report" / name).stat().st_size > 0
    after = _files(out)
    assert after == before, sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
    assert [r["artifact"] for r in result["deployment"]][0] == "keras"
    assert sum(r["verdict"] == "verified" for r in result["deployment"]) == 5


def test_report_renders_in_headless_chromium_with_its_images(reported, tmp_path):
    from playwright.sync_api import sync_playwright

    out, *_ = reported
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


def test_model_card_names_data_hparams_slices_and_versions(reported):
    out, *_ = reported
    md = (out / "report" / "model_card.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["sha256"]["train"][:16] in md
    assert "| learning_rate | 0.003 |" in md and "| epochs | 4 |" in md
    assert "| test accuracy |" in md and "flagged when accuracy is worse than overall" in md
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


def test_regression_report_judges_by_the_recipes_metric_mae(tmp_path):
    """A regression card's headline, slices and attributions are in MAE (lower is better), not accuracy."""
    import kerakit
    from kerakit.report import report

    recipe = tmp_path / "diabetes.py"
    recipe.write_text((ROOT / "recipes" / "diabetes_mlp.py").read_text()
                      + '\nSLICES = {"older": lambda f, y: f["features"][:, 0] > 0, '
                        '"everything": lambda f, y: f["features"][:, 0] > -1}\nSLICE_MARGIN = -0.5\n')
    run = kerakit.train(recipe, tmp_path / "run", epochs=3, verbose=0, log=lambda m: None)
    result = report(run.path, log=lambda m: None)
    md = (run.path / "report" / "model_card.md").read_text()
    summary = next(line for line in md.splitlines() if line.startswith("| test mae |"))
    assert f"{run.metrics['mae']:.4f}" in summary
    assert "| slice | examples | mae | vs overall | flag |" in md
    assert "flagged when mae is worse than overall" in md and "× overall" in md
    assert "slice 'everything': mae" in " ".join(result["flags"])  # any MAE is above a margin below zero
    assert "Permutation importance of `features`: the mae increase" in md and "| bmi |" in md
    assert "accuracy" not in md


def test_a_run_whose_model_has_a_custom_layer_is_reported_with_custom_objects(reported, tmp_path, monkeypatch):
    """`--custom-objects MODULE` reaches the report's loader; without it, one line names the class and the option."""
    import shutil

    import keras

    from custom_scale import Scale  # defined outside kerakit and not registered with Keras
    from kerakit.formats.keras import CUSTOM_OBJECTS_ENV

    monkeypatch.delenv(CUSTOM_OBJECTS_ENV, raising=False)  # the CLI sets it in this process; restored after
    out, *_ = reported
    run = tmp_path / "scaled"
    shutil.copytree(out, run)
    shutil.rmtree(run / "report")
    model = keras.saving.load_model(out / "model.keras")
    image = keras.Input((8, 8, 1), name="image")
    keras.Model(image, model(Scale(1.0)(image))).save(run / "model.keras")
    without = cli_in_process("report", run)
    assert without.returncode == 1 and len(without.stderr.strip().splitlines()) == 1, without.stderr
    assert "uses the custom class 'Scale', which is not known here: pass --custom-objects MODULE" in without.stderr
    with_module = cli_in_process("report", run, "--custom-objects", "custom_scale")
    assert with_module.returncode == 0, with_module.stderr
    def summary(card):
        return next(line for line in card.read_text().splitlines() if line.startswith("| test accuracy |"))

    assert summary(run / "report" / "model_card.md") == summary(out / "report" / "model_card.md")  # x 1.0: the same


def test_report_of_a_missing_run_is_one_line(tmp_path):
    r = cli_in_process("report", tmp_path / "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr
