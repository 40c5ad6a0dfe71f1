"""Runs a .tflite file in the ai-edge-litert Interpreter itself (not through keras_vit), so
export tests check each file in its own runtime rather than trusting the package's reader."""

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def run_tflite(path, images):
    """The file's output on ``images`` (a float batch); int8 input and output are
    quantized and dequantized with the file's own scale and zero point."""
    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(details["index"], images.shape)
    interpreter.allocate_tensors()
    details, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if details["dtype"] == np.int8:
        scale, zero_point = details["quantization"]
        images = np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8)
    interpreter.set_tensor(details["index"], images)
    interpreter.invoke()
    result = interpreter.get_tensor(output["index"])
    if output["dtype"] == np.int8:
        scale, zero_point = output["quantization"]
        result = (result.astype("float32") - zero_point) * scale
    return result
