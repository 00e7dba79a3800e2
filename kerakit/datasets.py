"""Offline TFDS datasets built from data that ships inside scikit-learn.

Importing this module registers the builders, so `tfds.load("kerakit_digits")`
runs the real TFDS path (prepare -> TFRecord -> tf.data) with no network:

    kerakit_digits         8x8 grey digits, 10 classes, 1,797 images
    kerakit_wine           13 features, 3 classes, 178 rows
    kerakit_breast_cancer  30 features, 2 classes, 569 rows
    kerakit_diabetes       10 features, regression target, 442 rows
    kerakit_elnino         monthly El Nino sea surface temperature, 732 months 1950-2010 (statsmodels)

Each has a fixed `train`/`test` split (80/20, seeded, stratified where there
are classes), so every machine sees the same test set. The time series is
split by time instead: `train` is the first 80 % of the weeks and `test` the
last 20 %, each in time order (TFDS shuffling is off for it).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class _SklearnDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A scikit-learn bundled dataset as a TFDS builder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: sklearn data, 80/20 seeded split."}
    LOADER = ""  # sklearn.datasets function name
    SUPERVISED_KEYS = ("features", "label")
    DESCRIPTION = ""

    def _load(self):
        import sklearn.datasets

        return getattr(sklearn.datasets, self.LOADER)()

    def _is_classification(self) -> bool:
        return True

    def _example(self, x, y) -> dict:
        return {"features": x.astype(np.float32), "label": y}

    def _features(self, bunch) -> dict:
        return {
            "features": tfds.features.Tensor(shape=(bunch.data.shape[1],), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=[str(n) for n in bunch.target_names]),
        }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(self._features(self._load())),
            supervised_keys=self.SUPERVISED_KEYS,
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        from sklearn.model_selection import train_test_split

        bunch = self._load()
        index = np.arange(len(bunch.target))
        train, test = train_test_split(
            index,
            test_size=TEST_FRACTION,
            random_state=SPLIT_SEED,
            stratify=bunch.target if self._is_classification() else None,
        )
        return {"train": self._generate_examples(bunch, train), "test": self._generate_examples(bunch, test)}

    def _generate_examples(self, bunch, index):
        for i in index:
            yield int(i), self._example(bunch.data[i], bunch.target[i])


class KerakitDigits(_SklearnDataset):
    LOADER = "load_digits"
    SUPERVISED_KEYS = ("image", "label")
    DESCRIPTION = "scikit-learn's 8x8 handwritten digits (UCI), pixel values 0..16."

    def _features(self, bunch):
        return {
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=[str(n) for n in bunch.target_names]),
        }

    def _example(self, x, y):
        return {"image": x.reshape(8, 8, 1).astype(np.uint8), "label": y}


class KerakitWine(_SklearnDataset):
    LOADER = "load_wine"
    DESCRIPTION = "scikit-learn's wine recognition data: 13 chemical features, 3 cultivars."


class KerakitBreastCancer(_SklearnDataset):
    LOADER = "load_breast_cancer"
    DESCRIPTION = "scikit-learn's Wisconsin breast cancer data: 30 features, malignant/benign."


class KerakitDiabetes(_SklearnDataset):
    LOADER = "load_diabetes"
    DESCRIPTION = "scikit-learn's diabetes data: 10 baseline features, disease progression after one year."

    def _is_classification(self):
        return False

    def _features(self, bunch):
        return {
            "features": tfds.features.Tensor(shape=(bunch.data.shape[1],), dtype=np.float32),
            "label": tfds.features.Scalar(dtype=np.float32),
        }

    def _example(self, x, y):
        return {"features": x.astype(np.float32), "label": np.float32(y)}


class KerakitElnino(tfds.core.GeneratorBasedBuilder):
    """Monthly El Nino sea surface temperature, from the copy that ships inside statsmodels.

    One example per month, in time order: `time` (days since 1970-01-01, the
    month's first day) and `temperature` (degrees C, averaged over the Nino
    region), January 1950 to December 2010.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: statsmodels elnino as one monthly series, 80/20 split by time."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Monthly El Nino sea surface temperature (C), 1950-2010 (statsmodels.datasets.elnino).",
            features=tfds.features.FeaturesDict({
                "time": tfds.features.Scalar(dtype=np.int64),
                "temperature": tfds.features.Scalar(dtype=np.float32),
            }),
            homepage="https://www.statsmodels.org/stable/datasets/generated/elnino.html",
            disable_shuffling=True,  # a series: examples stay in time order
        )

    def _split_generators(self, dl_manager):
        times, values = elnino_series()
        cut = int(round(len(values) * (1 - TEST_FRACTION)))
        return {"train": self._generate_examples(times[:cut], values[:cut]),
                "test": self._generate_examples(times[cut:], values[cut:])}

    def _generate_examples(self, times, values):
        for t, v in zip(times, values):
            yield int(t), {"time": np.int64(t), "temperature": np.float32(v)}


def elnino_series() -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' elnino table (a row per year, a column per month) as one series: (days since 1970-01-01, C)."""
    from statsmodels.datasets import elnino

    frame = elnino.load_pandas().data
    years = frame["YEAR"].to_numpy(dtype=int)
    months = np.array([f"{y:04d}-{m:02d}" for y in years for m in range(1, 13)], dtype="datetime64[M]")
    days = (months.astype("datetime64[D]") - np.datetime64("1970-01-01", "D")).astype(np.int64)
    return days, frame.drop(columns="YEAR").to_numpy(dtype=np.float64).reshape(-1)


BUNDLED = ("kerakit_digits", "kerakit_wine", "kerakit_breast_cancer", "kerakit_diabetes", "kerakit_elnino")
