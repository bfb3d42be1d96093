"""Small Keras helpers shared by the network's layers (as KerasHub's ``keras_utils``)."""

from __future__ import annotations

from typing import Any

import keras


def clone_initializer(initializer: Any) -> Any:
    """A fresh instance of ``initializer`` with the same configuration (KerasHub's
    ``clone_initializer``), or ``initializer`` itself when it is not an ``Initializer`` object.

    Every conv of a layer gets its own instance: one shared unseeded instance may repeat its
    values from one variable to the next. Cloned by ``from_config(get_config())``, not through
    ``keras.initializers.serialize``, which imports TensorFlow whenever it is installed (to
    check for TF types), even on the JAX backend.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())
