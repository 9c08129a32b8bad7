"""Small real TFLite models for the tests, made with TensorFlow's converter (the build extra)."""

from __future__ import annotations

import numpy as np


def convert_int8(tf, model, size: int, per_tensor: bool = False, shape=None) -> bytes:
    """Full-integer post-training quantization of a Keras ``model`` (input size x size x 3, or
    ``shape`` without the batch), int8 in and out, calibrated on uniform noise in [-1, 1]."""
    rng = np.random.default_rng(0)
    dims = (1, *(shape or (size, size, 3)))

    def rep():
        for _ in range(8):
            yield [rng.uniform(-1, 1, dims).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    if per_tensor:
        conv._experimental_disable_per_channel = True
    return conv.convert()
