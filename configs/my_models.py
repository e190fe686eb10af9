"""A model factory of one's own, for configs/cnn1_factory.yaml (`model.factory: "my_models:cnn"`).

expkit imports this module from beside the config file and calls `cnn(**model.args)`, adding
input_shape and num_classes because the function takes them. Any Keras code works here: this one is
seed 000's CNN1 written with Keras' functional API.
"""

import keras


def cnn(input_shape, num_classes, filters=(32, 64), dense_units=64):
    inputs = keras.Input(shape=input_shape)
    x = inputs  # (28, 28, 1): data.layout image adds the channel axis
    for f in filters:
        x = keras.layers.Conv2D(f, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="cnn")
