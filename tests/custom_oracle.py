"""keras-tuner Oracles defined outside kerakit, for the custom-Oracle tests: `--tuner custom_oracle:UnitsLadder`.

kerakit builds an Oracle class as `Class(objective=, max_trials=, hyperparameters=, tune_new_entries=True,
seed=)` and runs it with keras_tuner.Tuner; nothing here knows kerakit.
"""

import keras_tuner as kt


class DefaultsFirst(kt.oracles.RandomSearchOracle):
    """Random search whose first trial is the recipe's own defaults, so the search never ends below them
    (the README's example)."""

    def populate_space(self, trial_id):
        if not self.trials:  # the trials created so far, kept across a resume
            return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": self.get_space().values}
        return super().populate_space(trial_id)


class UnitsLadder(kt.Oracle):
    """Trial k trains `units` = LADDER[k] with every other hyperparameter at its default, then stops: every
    trial is known in advance, so a test can tell that what the oracle proposed is what was trained."""

    LADDER = (128, 16, 80)

    def populate_space(self, trial_id):
        k = len(self.trials)
        if k >= len(self.LADDER):
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return {"status": kt.engine.trial.TrialStatus.RUNNING,
                "values": {**self.get_space().values, "units": self.LADDER[k]}}
