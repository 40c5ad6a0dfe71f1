"""Deployment: export to SavedModel, TFLite and ONNX (verified), and prediction from any
artifact. :mod:`~keras_vit.deploy.artifacts` knows the files, :mod:`~keras_vit.deploy.export`
writes them, :mod:`~keras_vit.deploy.predict` uses them."""
