"""Training: configuration, recipes, callbacks, the ``fit`` loop and the multi-worker loop.

``keras_vit.train(TrainConfig(...))`` and ``keras_vit.evaluate(run_folder)`` are the entry
points. :mod:`~keras_vit.training.config` (fields, no Keras import, so the CLI can read
it fast), :mod:`~keras_vit.training.resolution` (defaults and checks),
:mod:`~keras_vit.training.recipes` (strategy, data, model, optimizer, loss),
:mod:`~keras_vit.training.preparation` (one run's preparation, shared by both loops),
:mod:`~keras_vit.training.callbacks`, :mod:`~keras_vit.training.lifecycle` (a run
folder's life, shared by both loops), :mod:`~keras_vit.training.fit`,
:mod:`~keras_vit.training.multiworker` and :mod:`~keras_vit.training.optimizers`.
"""
