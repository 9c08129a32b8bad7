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

    return _full_int8(tf, model, rep, per_tensor)


def _full_int8(tf, model, rep, per_tensor: bool = False) -> bytes:
    """TFLite's full-integer PTQ of a Keras ``model``, int8 in and out, calibrated on ``rep()``."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    if per_tensor:
        conv._experimental_disable_per_channel = True
    return conv.convert()


def constant_head(tf, x, name: str, cls: int, classes: int = 1000):
    """A softmax head that answers ``cls`` whatever its input (zero kernel, one high bias):
    a confident (about 0.98) and known answer."""
    bias = np.full(classes, -4.0, np.float32)
    bias[cls] = 6.0
    return tf.keras.layers.Dense(classes, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=tf.keras.initializers.Constant(bias),
                                 name=name)(x)


def convert_float(tf, model) -> bytes:
    """A float32 .tflite of a Keras model (signature names kept)."""
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


#: ImageNet normalisation as PyTorch/torchvision write it, in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grey_level_classifier(tf, size: int = 8, spacing: float = 0.3, count: int = 15):
    """A Keras model for PyTorch-style input ``(p/255 - mean_c) / std_c``: output k (k < count)
    is a bump ``relu(1 - |v - c_k| / spacing)`` around the centre ``c_k = -1.8 + spacing k`` of
    the blue channel's mean ``v``; the other outputs are 0. Bumps rather than softmax logits,
    so an 8-bit output still tells neighbouring classes apart. Returns (model, centres)."""
    centres = np.array([-1.8 + spacing * k for k in range(count)], np.float32)
    k1 = np.zeros((3, 2 * count), np.float32)
    k1[2, :count], k1[2, count:] = 1.0, -1.0  # v - c_k and c_k - v
    b1 = np.concatenate([-centres, centres])
    k2 = np.zeros((2 * count, 1000), np.float32)
    b2 = np.zeros(1000, np.float32)
    for k in range(count):
        k2[k, k] = k2[count + k, k] = -1.0 / spacing
        b2[k] = 1.0
    inp = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inp)
    x = tf.keras.layers.Dense(2 * count, activation="relu",
                              kernel_initializer=tf.keras.initializers.Constant(k1),
                              bias_initializer=tf.keras.initializers.Constant(b1))(x)
    out = tf.keras.layers.Dense(1000, activation="relu",
                                kernel_initializer=tf.keras.initializers.Constant(k2),
                                bias_initializer=tf.keras.initializers.Constant(b2))(x)
    return tf.keras.Model(inp, out), centres


def imagenet_normalised(pixels) -> np.ndarray:
    """``(p/255 - mean_c) / std_c`` of uint8 RGB pixels (..., 3), float32."""
    p = np.asarray(pixels, np.float32) / 255.0
    return (p - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def convert_int8_imagenet(tf, model, size: int) -> bytes:
    """Full-int8 PTQ of ``model`` calibrated on ImageNet-normalised random pixels (with black and
    white frames, so the input range is the whole [-2.12, 2.64]): input scale about 0.01866,
    zero point about -14, as a PyTorch -> TFLite conversion gives."""
    rng = np.random.default_rng(0)

    def rep():
        for k in range(10):
            if k == 0:
                px = np.zeros((1, size, size, 3))
            elif k == 1:
                px = np.full((1, size, size, 3), 255.0)
            else:
                px = rng.integers(0, 256, (1, size, size, 3))
            yield [imagenet_normalised(px)]

    return _full_int8(tf, model, rep)
