"""The export formats, each an exporter registered beside the reader that opens its files.

``FORMATS_REGISTRY[format]`` is ``(exporter class, reader class)``; :func:`plan` turns the
formats and TFLite precisions asked for into the exporters of one export, in the order
their files are written and listed in the manifest.
"""

from __future__ import annotations

from keras_vit.deploy.artifacts import READERS
from keras_vit.deploy.onnx_export import OnnxExporter
from keras_vit.deploy.savedmodel_export import SavedModelExporter
from keras_vit.deploy.tflite_export import FloatSavedModel, TFLiteExporter

EXPORTERS = {"savedmodel": SavedModelExporter, "tflite": TFLiteExporter, "onnx": OnnxExporter}
FORMATS_REGISTRY = {name: (exporter, READERS[name]) for name, exporter in EXPORTERS.items()}


def plan(model, serving, formats, precisions, *, calibration, opset, scratch):
    """The exporters of one export: the SavedModel, a TFLite file per precision (sharing
    one float SavedModel written into ``scratch``), then ONNX."""
    exporters = [SavedModelExporter()] if "savedmodel" in formats else []
    if "tflite" in formats and precisions:
        float_model = FloatSavedModel(model, serving, scratch)
        exporters += [TFLiteExporter(precision, float_model, calibration) for precision in precisions]
    if "onnx" in formats:
        exporters.append(OnnxExporter(opset))
    return exporters
