"""`kerakit drift`: the training-data profile against new inputs, raw or from a server request log.

The first tests pin the statistics (`kerakit.stats`) on synthetic arrays (no run, no TensorFlow);
the rest run the real command on a copy of the shared digits run."""

import json
import re
import shutil

import numpy as np
import pytest
import requests

from conftest import cli_in_process
from kerakit.stats import compare_series, profile_split, proportions_psi, psi, summarize, summarize_categories

RNG = np.random.default_rng(0)
REFERENCE = RNG.normal(size=20_000)


# ----------------------------------------------------------------------------- PSI and KS on synthetic data

def test_summary_has_decile_bins_and_a_sample():
    ref = summarize(REFERENCE)
    assert len(ref["edges"]) == 9 and ref["proportions"] == pytest.approx([0.1] * 10, abs=1e-3)
    assert len(ref["sample"]) == 2000 and ref["sample"] == sorted(ref["sample"])


def test_psi_of_the_reference_itself_is_zero():
    assert psi(summarize(REFERENCE), REFERENCE) == pytest.approx(0, abs=1e-9)


def test_psi_of_fresh_data_from_the_same_distribution_is_small():
    assert psi(summarize(REFERENCE), RNG.normal(size=2000)) < 0.05


@pytest.mark.parametrize("shift, at_least", [(0.5, 0.2), (1.0, 0.8), (3.0, 3.0)])
def test_psi_grows_with_the_shift(shift, at_least):
    assert psi(summarize(REFERENCE), RNG.normal(shift, size=2000)) > at_least


def test_psi_of_values_outside_every_reference_bin_is_large_not_infinite():
    value = psi(summarize(REFERENCE), np.full(500, 100.0))
    assert 5 < value < 100


def test_psi_of_a_constant_reference_series():
    ref = summarize(np.zeros(1000))
    assert psi(ref, np.zeros(100)) == pytest.approx(0, abs=1e-9)
    assert psi(ref, np.ones(100)) > 1


def test_proportions_psi_is_symmetric_and_zero_for_equal_distributions():
    a, b = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert proportions_psi(a, a) == 0
    assert proportions_psi(a, b) == pytest.approx(proportions_psi(b, a)) == pytest.approx(0.3 * np.log(2.5) * 2)


def test_compare_series_uses_ks_on_the_reference_sample():
    ref = summarize(REFERENCE)
    same = compare_series(ref, RNG.normal(size=2000))
    assert same["ks"] < 0.06 and not same["drift"]
    # The same median, twice the spread: a change the medians alone would miss.
    wide = compare_series(ref, RNG.normal(scale=2.0, size=2000))
    assert wide["ks"] > 0.15 and wide["drift"]
    assert wide["reference_median"] == pytest.approx(0, abs=0.1) and wide["new_median"] == pytest.approx(0, abs=0.15)


def test_compare_series_drifts_when_either_statistic_passes_its_threshold():
    ref, shifted = summarize(REFERENCE), RNG.normal(0.5, size=2000)
    row = compare_series(ref, shifted)
    assert row["psi"] > 0.2 and row["ks"] > 0.15 and row["drift"]
    assert not compare_series(ref, shifted, psi_threshold=10, ks_threshold=1)["drift"]
    assert compare_series(ref, shifted, psi_threshold=10, ks_threshold=0.1)["drift"], "KS alone"
    assert compare_series(ref, shifted, psi_threshold=0.1, ks_threshold=1)["drift"], "PSI alone"


def _profile(rows: np.ndarray, batch: int, keep: int) -> dict:
    batches = ({"features": rows[i:i + batch]} for i in range(0, len(rows), batch))
    return profile_split(batches, lambda x: x["features"][:, :2], {"features": ["a", "b", "c"]}, ["yes", "no"], keep)


def test_a_profile_depends_on_the_rows_not_their_order_or_batching():
    rows = RNG.normal(size=(5000, 3))
    profile = _profile(rows, 32, keep=1000)
    assert profile["rows"] == 5000 and profile["profiled_rows"] == 1000  # a larger split: a sample, in bounded memory
    assert set(profile["series"]) == {"features.mean", "features.std", "features.min", "features.max",
                                      "features[a]", "features[b]", "features[c]"}
    assert profile == _profile(RNG.permutation(rows), 100, keep=1000)  # a shuffled pipeline: the same profile
    assert profile["predictions"]["proportions"] == pytest.approx([0.5, 0.5], abs=0.05)
    assert profile["predictions"]["class_names"] == ["yes", "no"]
    everything = _profile(rows, 32, keep=10_000)
    assert everything["profiled_rows"] == 5000
    assert everything["series"]["features[a]"] == summarize(rows[:, 0])


# ----------------------------------------------------------------------------- `kerakit drift` on a run

@pytest.fixture(scope="module")
def run_dir(digits_run, tmp_path_factory):
    """A copy of the shared digits run (this module exports it, and spoils its profile)."""
    out = tmp_path_factory.mktemp("drift") / "digits"
    shutil.copytree(digits_run.path, out)
    return out


@pytest.fixture(scope="module")
def test_inputs(run_dir):
    from kerakit.data import load_data
    from kerakit.runs import Run

    run = Run.open(run_dir)
    x, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    return x["image"]


def test_train_writes_the_profile_drift_compares_against(digits_run):
    profile = json.loads(digits_run.data_profile.read_text())
    assert profile["split"] == "train" and profile["rows"] == digits_run.manifest["data"]["sizes"]["train"]
    assert "image.mean" in profile["series"] and profile["predictions"]["kind"] == "classes"
    assert "data_profile.json" in digits_run.manifest["artifacts"]  # a run file like the model: hashed, checked


def test_drift_passes_held_out_data_and_catches_a_shift(run_dir, test_inputs, tmp_path):
    np.savez(tmp_path / "same.npz", image=test_inputs)
    np.savez(tmp_path / "shifted.npz", image=np.clip(test_inputs * 0.6 + 0.25, 0, 1))  # washed-out scans
    profile = (run_dir / "data_profile.json").read_bytes()
    same = cli_in_process("drift", run_dir, "--data", tmp_path / "same.npz", "--json")
    assert same.returncode == 0, same.stderr
    assert not json.loads(same.stdout)["drift"] and not json.loads(same.stdout)["profiled_now"]
    assert (run_dir / "data_profile.json").read_bytes() == profile  # drift only reads
    shifted = cli_in_process("drift", run_dir, "--data", tmp_path / "shifted.npz")
    assert shifted.returncode == 3, shifted.stderr
    assert "DRIFT" in shifted.stdout and "image.mean" in shifted.stdout.splitlines()[-1]


def test_drift_reads_the_server_request_log(run_dir, test_inputs, tmp_path):
    from kerakit.export import export
    from conftest import Server

    export(run_dir, formats=["onnx"], log=lambda m: None)  # a run is served from its ONNX export
    logs = {}
    for name, x in (("same", test_inputs), ("shifted", np.clip(test_inputs * 0.6 + 0.25, 0, 1))):
        logs[name] = tmp_path / f"{name}.jsonl"
        server = Server(run_dir, "--log", logs[name], log_dir=tmp_path)
        try:
            for i in range(0, len(x), 8):  # the way traffic arrives: many small requests
                r = requests.post(f"{server.url}/v1/models/digits_cnn:predict", json={"instances": x[i:i + 8].tolist()})
                assert r.status_code == 200
        finally:
            server.stop()
    same = cli_in_process("drift", run_dir, "--data", logs["same"])
    assert same.returncode == 0 and "no drift" in same.stdout, same.stdout + same.stderr
    assert "360 rows from 45 logged requests" in same.stdout
    shifted = cli_in_process("drift", run_dir, "--data", logs["shifted"])
    assert shifted.returncode == 3 and "DRIFT" in shifted.stdout


def test_a_run_without_a_current_profile_is_profiled_now_and_left_as_it_is(run_dir, test_inputs, tmp_path):
    """A run trained by an older kerakit: its training data is profiled for this check; drift writes nothing."""
    np.savez(tmp_path / "same.npz", image=test_inputs)
    profile = json.loads((run_dir / "data_profile.json").read_text())
    stale = {**profile, "version": 1, "series": {k: {**v, "proportions": [1.0] + [0.0] * (len(v["proportions"]) - 1)}
                                                  for k, v in profile["series"].items()}}
    (run_dir / "data_profile.json").write_text(json.dumps(stale))
    r = cli_in_process("drift", run_dir, "--data", tmp_path / "same.npz")
    assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr  # the stale bins would have drifted
    assert "training data profiled now: the run has no data_profile.json of this kerakit" in r.stdout
    assert json.loads((run_dir / "data_profile.json").read_text()) == stale
    (run_dir / "data_profile.json").write_text(json.dumps(profile))


@pytest.mark.parametrize("data, fragment", [
    ("missing.jsonl", "does not exist"),
    ("bad.jsonl", "bad.jsonl:1 is not a `kerakit serve` request log record"),
    ("wrong.npz", "holds arrays ['pixels']; the model's inputs are ['image']"),
    ("few.npz", "has 5 rows; a drift check needs at least 30"),
    ("inputs.txt", "Unsupported drift data"),
])
def test_drift_bad_data_is_one_clear_line(run_dir, tmp_path, data, fragment):
    (tmp_path / "bad.jsonl").write_text('{"not": "a record"}\n')
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((40, 8, 8, 1), np.float32))
    np.savez(tmp_path / "few.npz", image=np.zeros((5, 8, 8, 1), np.float32))
    (tmp_path / "inputs.txt").write_text("1,2\n")
    r = cli_in_process("drift", run_dir, "--data", tmp_path / data)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- categories of a string input

def test_categories_are_the_top_values_missing_and_other():
    values = ["Biscoe"] * 50 + ["Dream"] * 30 + [""] * 5 + [f"rare{i}" for i in range(15)]
    ref = summarize_categories(values, top=2)
    assert ref == {"values": ["Biscoe", "Dream", ""], "proportions": [0.5, 0.3, 0.05, 0.15]}
    assert summarize_categories([f"id{i}" for i in range(100)]) is None  # identifiers: free text, not categories


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A table model with string inputs (island, observer), trained briefly on 2000 rows, exported to ONNX."""
    import kerakit
    from kerakit.export import export
    from kerakit.sources import new_recipe
    from test_baselines import _skewed_csv

    tmp = tmp_path_factory.mktemp("table_drift")
    _, text = new_recipe("penguins", _skewed_csv(tmp / "penguins.csv", n=2000), label="species")
    (tmp / "penguins.py").write_text(text)
    run = kerakit.train(tmp / "penguins.py", tmp / "run", epochs=1, verbose=0, log=lambda m: None)
    export(run.path, formats=["onnx"], log=lambda m: None)  # a run is served from its ONNX export
    return run


def test_drift_compares_the_category_mix_of_a_string_input_logged_by_the_server(table_run, tmp_path):
    """Held-out rows sent to `kerakit serve` pass; the same rows with most islands turned to Torgersen (20 % of
    training) or to islands training never saw ("other") drift on `island`'s categories, with their PSI."""
    from kerakit.data import load_data

    profile = json.loads(table_run.data_profile.read_text())
    assert profile["categories"]["island"]["values"][:4] == ["Biscoe", "Dream", "Torgersen", "Shetland"]
    x, _ = load_data(table_run.recipe(), table_run.config["config"]).arrays("test")
    assert np.isnan(x["bill_mm"]).any()  # missing numbers go as JSON null: the log must stay strict JSON
    shifted = {**x, "island": x["island"].copy()}
    shifted["island"][::5, 0] = "Atlantis"
    shifted["island"][1::5, 0] = shifted["island"][2::5, 0] = shifted["island"][3::5, 0] = "Torgersen"
    results = {name: _drift_of_served_rows(table_run, rows, tmp_path / f"{name}.jsonl")
               for name, rows in (("same", x), ("shifted", shifted))}
    assert "Atlantis" not in (tmp_path / "shifted.jsonl").read_text()  # the log holds digests, not what users sent
    same = json.loads(results["same"].stdout)
    assert results["same"].returncode == 0 and not same["drift"], results["same"].stdout
    assert {r["input"] for r in same["categories"]} == {"island", "observer"}
    shifted = json.loads(results["shifted"].stdout)
    assert results["shifted"].returncode == 3 and "island categories" in shifted["drifted"], shifted["drifted"]
    assert all(name.startswith("island") or name == "predictions" for name in shifted["drifted"])  # lengths move too
    island = next(r for r in shifted["categories"] if r["input"] == "island")
    assert island["psi"] > 0.2 and island["drift"]
    other = island["buckets"][-1]
    assert other["value"] is None and other["reference"] < 0.01 and other["new"] == pytest.approx(0.2, abs=0.02)
    text = cli_in_process("drift", table_run.path, "--data", tmp_path / "shifted.jsonl")
    assert re.search(rf"^ island categories +{island['psi']:.3f} .* DRIFT", text.stdout, re.M), text.stdout
    assert "island categories" in text.stdout.splitlines()[-1]


def _drift_of_served_rows(run, rows: dict, log):
    """`kerakit drift RUN --data LOG --json` after `rows` (inputs by name, NaN for missing) went to `kerakit serve
    RUN --log LOG` as TF Serving columns, 16 rows a request, with null for NaN."""
    from conftest import Server

    server = Server(run.path, "--log", log, log_dir=log.parent)
    try:
        for i in range(0, len(next(iter(rows.values()))), 16):
            body = {"inputs": {k: [[None if isinstance(c, float) and c != c else c for c in r]
                                    for r in v[i:i + 16].tolist()] for k, v in rows.items()}}
            r = requests.post(f"{server.url}/v1/models/penguins:predict", json=body)
            assert r.status_code == 200, r.text
    finally:
        server.stop()
    for line in log.read_text().splitlines():  # strict JSON, as jq or a browser reads it: null, never NaN
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the request log: {line[:200]}"))
    return cli_in_process("drift", run.path, "--data", log, "--json")


def test_a_number_column_that_starts_arriving_empty_drifts(table_run, tmp_path):
    """Training had bill_mm missing in 0.4 % of rows; held-out rows with half of it missing (their values as
    before) drift on bill_mm by the missing share, which the table shows beside the medians. Before, a missing
    value made every statistic of its series NaN, and NaN > threshold is false: the column never drifted."""
    from kerakit.data import load_data

    x, _ = load_data(table_run.recipe(), table_run.config["config"]).arrays("test")
    gaps = {**x, "bill_mm": x["bill_mm"].copy()}
    gaps["bill_mm"][::2] = np.nan
    result = _drift_of_served_rows(table_run, gaps, tmp_path / "gaps.jsonl")
    assert result.returncode == 3, result.stdout
    drifted = json.loads(result.stdout)["drifted"]
    assert drifted == ["bill_mm", "predictions"] or drifted == ["bill_mm"], drifted  # one series per column
    row = next(r for r in json.loads(result.stdout)["series"] if r["series"] == "bill_mm")
    assert row["reference_missing"] < 0.01 and row["new_missing"] == pytest.approx(0.5, abs=0.01)
    assert row["psi"] > 0.2 and row["ks"] < 0.2  # the values present did not move: the missing share did
    assert row["new_median"] == pytest.approx(row["reference_median"], rel=0.05)
    text = cli_in_process("drift", table_run.path, "--data", tmp_path / "gaps.jsonl")
    shown = re.escape(f"({row['new_missing']:.1%} missing)")
    assert re.search(rf"^ bill_mm +\d.*{shown} +DRIFT", text.stdout, re.M), text.stdout


def test_missing_values_are_a_bin_of_their_own_and_leave_ks_to_the_values_present():
    ref = summarize(np.where(np.arange(20_000) % 10 == 0, np.nan, REFERENCE))  # 10 % missing
    assert ref["missing"] == pytest.approx(0.1) and len(ref["edges"]) == 9 and not np.isnan(ref["sample"]).any()
    alike = np.where(np.arange(2000) % 10 == 0, np.nan, RNG.normal(size=2000))
    row = compare_series(ref, alike)
    assert not row["drift"] and row["psi"] < 0.05 and row["new_missing"] == pytest.approx(0.1)
    shifted = compare_series(ref, np.where(np.arange(2000) % 10 == 0, np.nan, RNG.normal(1.0, size=2000)))
    assert shifted["drift"] and shifted["ks"] > 0.3  # gaps no longer hide a shift of the values present
    empty = compare_series(ref, np.full(500, np.nan))
    assert empty["drift"] and empty["new_median"] is None and empty["ks"] == 0 and empty["new_missing"] == 1
    assert psi(summarize(REFERENCE), REFERENCE) == pytest.approx(0, abs=1e-9)  # no gaps: the PSI of before
