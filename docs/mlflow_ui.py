"""A screenshot of a tracked build's run in the MLflow UI, taken in real headless Chromium.

    python docs/mlflow_ui.py runs/demo docs/mlflow-ui.png        # the store RUN/mlflow.json records

Opens the build's MLflow run page (served, JavaScript and all, by the MLflow server itself: nothing is
fetched from elsewhere), waits until it shows the run's name, its nested training and the registered model
its verified artifacts went to, and saves the page as a PNG. tests/test_tracking.py runs it on its own
build; README's picture (docs/mlflow-ui.png) is this script run on `kerakit build digits_cnn --track
--register digits --out runs/demo`. Needs playwright and a Chromium ($KERAKIT_CHROMIUM, else
/usr/bin/chromium; `make test` installs Debian's).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# MLflow 3's UI opens its AI assistant panel on a first visit; a reader of the picture wants the run.
CLOSED_ASSISTANT = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")
WAIT_MS = 60_000


def build_run(run_dir: "str | os.PathLike") -> dict:
    """What RUN/mlflow.json records of a build: the store, its runs' ids, the name it registered under; and
    the build run's experiment id and name, and its nested training's name, as the store has them."""
    from mlflow import MlflowClient

    record = json.loads((Path(run_dir) / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    build, train = client.get_run(record["runs"]["build"]), client.get_run(record["runs"]["train"])
    return {"uri": record["tracking_uri"], "experiment_id": build.info.experiment_id,
            "run_id": build.info.run_id, "run_name": build.info.run_name, "child_id": train.info.run_id,
            "child_name": train.info.run_name, "registered": (record.get("build_done") or {}).get("register")}


def screenshot(build: dict, out: "str | os.PathLike", chromium: str | None = None) -> dict:
    """Open the build run's page on its `mlflow server` (`build`: as `build_run` returns it), wait until it
    shows the run's name, the link to its nested training and the link to the registered model, and save
    it to `out`. Returns what the page showed: its heading, those two links' texts, its metrics' names, and
    the requests that went anywhere but the server."""
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium or os.environ.get("KERAKIT_CHROMIUM", "/usr/bin/chromium")
    uri = build["uri"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(CLOSED_ASSISTANT)
            page = context.new_page()
            elsewhere = []
            page.on("request", lambda r: None if r.url.startswith((uri, "data:", "blob:")) else elsewhere.append(r.url))
            page.goto(f"{uri}/#/experiments/{build['experiment_id']}/runs/{build['run_id']}")
            heading = page.get_by_role("heading", name=build["run_name"], exact=True)
            child = page.locator(f'a[href$="/runs/{build["child_id"]}"]')
            registered = page.locator(f'a[href^="#/models/{build["registered"]}/versions/"]')
            # The metrics table fills in last (the UI polls the server, so the network never goes idle).
            metric = page.get_by_role("link", name="step.train.seconds", exact=True)
            for shown in (heading, child, registered, metric):
                expect(shown).to_be_visible(timeout=WAIT_MS)
            page.screenshot(path=str(out))
            return {"heading": heading.inner_text(), "child": child.inner_text(),
                    "registered": registered.inner_text(), "elsewhere": elsewhere,
                    "metrics": page.evaluate("Array.from(document.querySelectorAll('a[href*=\"metric\"]'))"
                                             ".map(a => a.innerText)")}
        finally:
            browser.close()


def main(run_dir: str, out: str) -> None:
    build = build_run(run_dir)
    if not build["registered"]:
        raise SystemExit(f"{run_dir} was not built with --register NAME: no registered model to show.")
    shown = screenshot(build, out)
    print(f"{out}: {shown['heading']!r} at {build['uri']}, nested {shown['child']!r}, registered "
          f"{shown['registered']!r}; requests elsewhere: {shown['elsewhere'] or 'none'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
