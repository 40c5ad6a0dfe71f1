"""Deployment: export to SavedModel, TFLite and ONNX (verified), and prediction from any
artifact. :mod:`~keras_vit.deploy.export` computes one :class:`~keras_vit.deploy.serving.ServingSpec`
and runs the exporters of :mod:`~keras_vit.deploy.formats` (each registered beside its
reader in :mod:`~keras_vit.deploy.artifacts`); :mod:`~keras_vit.deploy.manifest` records
them; :mod:`~keras_vit.deploy.predict` and :mod:`~keras_vit.deploy.latency` use the readers."""
