"""Custom classes defined outside kerakit, for the --custom-objects tests (not registered with Keras):
a layer, and a subclassed model."""

import keras


class Scale(keras.layers.Layer):
    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class TwoLayerNet(keras.Model):
    """A subclassed model: no Input layers, no `inputs` or `outputs` until Keras traces a call."""

    def __init__(self, units: int = 16, classes: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.classes = units, classes
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.logits = keras.layers.Dense(classes)

    def call(self, x):
        return self.logits(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "classes": self.classes}
