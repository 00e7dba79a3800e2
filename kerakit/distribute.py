"""`--strategy`: which `tf.distribute` strategy a training run uses.

    default       the default (single-device) strategy
    mirrored      MirroredStrategy over the local GPUs (one CPU replica without GPUs)
    multi-worker  MultiWorkerMirroredStrategy; the cluster comes from $TF_CONFIG

Under multi-worker only the chief (task 0 of "chief", or worker 0 when there
is no chief) writes the run directory; the other workers write scratch copies
that are deleted when training ends.
"""

from __future__ import annotations

import json
import os

from kerakit.errors import KerakitError

STRATEGIES = ("default", "mirrored", "multi-worker")


def check_name(name: str | None) -> str:
    name = name or "default"
    if name not in STRATEGIES:
        raise KerakitError(f"Invalid strategy={name!r}. Expected one of {', '.join(STRATEGIES)}.")
    if name == "multi-worker":
        cluster_task()  # validates TF_CONFIG before TensorFlow starts
    return name


def cluster_task() -> tuple[str, int, bool]:
    """(task type, task index, is chief) from $TF_CONFIG."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise KerakitError(
            "strategy=multi-worker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, "task": {"type": "worker", "index": 0}}.'
        )
    try:
        tf_config = json.loads(raw)
        task_type, index = tf_config["task"]["type"], int(tf_config["task"]["index"])
        cluster = tf_config["cluster"]
    except (ValueError, KeyError, TypeError) as e:
        raise KerakitError(f"Invalid TF_CONFIG={raw!r}: {e}. Expected cluster and task (type, index).") from None
    chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)
    return task_type, index, chief


def make_strategy(name: str | None):
    import tensorflow as tf

    name = check_name(name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise KerakitError(
                f"strategy=multi-worker must be the first TensorFlow work in its process ({e}). "
                "Start training in a fresh process (e.g. the `kerakit train` command)."
            ) from e
    return tf.distribute.get_strategy()


def is_chief(name: str | None) -> bool:
    return check_name(name) != "multi-worker" or cluster_task()[2]


def prepare_fit(strategy, model, train) -> None:
    """Let `model.fit` run under MultiWorkerMirroredStrategy with Keras 3 (`train`: the training dataset).

    Keras 3.15's TF trainer breaks with more than one worker
    (keras-team/keras#20585): `fit` first reduces a distributed input batch
    with MEAN in eager mode (which collective ops cannot do) only to learn
    its shapes, and its step function reduces scalar metrics along axis 0.
    We build the model's compiled state from a local batch instead, and
    reduce scalars with axis=None. Nothing changes for other strategies, and only this one takes a batch of
    `train`: taking one fills the shuffle buffer (every training photo decoded, 0.2-0.4 s in the image bench)
    into a cache that the abandoned iterator then drops.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    local_batch = next(iter(train))
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=local_batch)

    model._maybe_symbolic_build = symbolic_build
    if getattr(tf_trainer.reduce_per_replica, "_kerakit", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None)
                if isinstance(v, tf.distribute.DistributedValues) else v,
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica._kerakit = True
    tf_trainer.reduce_per_replica = reduce_per_replica
