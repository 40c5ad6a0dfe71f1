"""The fine-tuning toolkit against its references: timm's EMA update and layer-decay
parameter groups, timm's RandomErasing, DeiT's DistillationLoss; and each train flag."""

import fnmatch
import json
import re
from collections import defaultdict
from itertools import chain

import keras
import numpy as np
import pytest
from conftest import randomize, tiny_vit

from keras_vit import cli
from keras_vit.data.erasing import random_erasing
from keras_vit.training import layer_decay, optimizers
from keras_vit.training.config import TrainConfig
from keras_vit.training.resolution import resolve_config
from keras_vit.training.distillation import attach_teacher, distillation_loss
from keras_vit.training.ema import AveragedValidation, averaged_weights, averages
from keras_vit.training.recipes import build_datasets, build_model, build_optimizer


# --------------------------------------------------------------------------- EMA
def _batches(count, image_size=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (count, 4, image_size, image_size, 3)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, (count, 4))]
    return images, labels


@pytest.mark.slow  # trains
@pytest.mark.parametrize("accumulation", [None, 2])
def test_ema_follows_timm_model_ema_v2_update_on_each_optimizer_update(accumulation):
    decay, steps = 0.8, 6
    model = randomize(tiny_vit(), seed=1)
    optimizer = optimizers.AdamW(learning_rate=0.01, use_ema=True, ema_momentum=decay,
                                 gradient_accumulation_steps=accumulation)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    # timm: the EMA model is a copy of the model when training starts, then after each
    # optimizer update ema = decay * ema + (1 - decay) * weights (ModelEmaV2.update).
    expected = [v.numpy().astype("float64") for v in model.trainable_variables]
    images, labels = _batches(steps)
    for step in range(steps):
        model.train_on_batch(images[step], labels[step])
        if accumulation is None or (step + 1) % accumulation == 0:
            weights = [v.numpy() for v in model.trainable_variables]
            expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    got = [average.numpy() for _, average in averages(model)]
    assert len(got) == len(expected) == len(model.trainable_variables)
    for variable, value, reference in zip(model.trainable_variables, got, expected):
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    # and the weights themselves moved away from the average
    assert max(np.abs(v.numpy() - e).max() for v, e in zip(model.trainable_variables, expected)) > 1e-3


@pytest.mark.slow  # trains
def test_validation_and_saving_see_the_averaged_weights_and_training_its_own():
    model = randomize(tiny_vit(), seed=2)
    model.compile(optimizer=optimizers.AdamW(learning_rate=0.05, use_ema=True, ema_momentum=0.5),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    images, labels = _batches(3)
    for step in range(3):
        model.train_on_batch(images[step], labels[step])
    trained = [v.numpy() for v in model.trainable_variables]
    average = [a.numpy() for _, a in averages(model)]
    averaged_model = tiny_vit()
    averaged_model.set_weights(average)  # a tiny ViT has only trainable weights
    averaged_model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    loss = model.evaluate(images[0], labels[0], callbacks=[AveragedValidation()], verbose=0)
    assert loss == pytest.approx(averaged_model.evaluate(images[0], labels[0], verbose=0), rel=1e-6)
    with averaged_weights(model):
        for variable, value in zip(model.trainable_variables, average):
            np.testing.assert_array_equal(variable.numpy(), value)
    for variable, value in zip(model.trainable_variables, trained):  # swapped back exactly
        np.testing.assert_array_equal(variable.numpy(), value)


# --------------------------------------------------------------------------- layer decay
# timm's parameter names for the same layout, with the number of dimensions of timm's tensor.
_TIMM_NAMES = {
    "embedding/cls": ("cls_token", 3), "embedding/dist_token": ("dist_token", 3),
    "embedding/registers": ("reg_token", 3), "embedding/pos_embedding": ("pos_embed", 3),
    "embedding/projection/kernel": ("patch_embed.proj.weight", 4), "embedding/projection/bias": ("patch_embed.proj.bias", 1),
    "LayerNorm_0/gamma": ("norm1.weight", 1), "LayerNorm_0/beta": ("norm1.bias", 1),
    "LayerNorm_2/gamma": ("norm2.weight", 1), "LayerNorm_2/beta": ("norm2.bias", 1),
    "MlpBlock_3/Dense_0/kernel": ("mlp.fc1.weight", 2), "MlpBlock_3/Dense_0/bias": ("mlp.fc1.bias", 1),
    "MlpBlock_3/Dense_1/kernel": ("mlp.fc2.weight", 2), "MlpBlock_3/Dense_1/bias": ("mlp.fc2.bias", 1),
    "query/kernel": ("attn.qkv.weight", 2), "key/kernel": ("attn.qkv.weight", 2), "value/kernel": ("attn.qkv.weight", 2),
    "query/bias": ("attn.qkv.bias", 1), "key/bias": ("attn.qkv.bias", 1), "value/bias": ("attn.qkv.bias", 1),
    "attention_output/kernel": ("attn.proj.weight", 2), "attention_output/bias": ("attn.proj.bias", 1),
    "encoder_norm/gamma": ("norm.weight", 1), "encoder_norm/beta": ("norm.bias", 1),
    "fc_norm/gamma": ("fc_norm.weight", 1), "fc_norm/beta": ("fc_norm.bias", 1),
    "head/kernel": ("head.weight", 2), "head/bias": ("head.bias", 1),
    "head_dist/kernel": ("head_dist.weight", 2), "head_dist/bias": ("head_dist.bias", 1),
}
# group_matcher of timm's VisionTransformer and of DeiT's VisionTransformerDistilled.
_VIT_MATCHER = dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])
_DEIT_MATCHER = dict(stem=r"^cls_token|pos_embed|patch_embed|dist_token", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])
_TIMM_NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token")


def _timm_name(path):
    block = re.match(r"^encoderblock_(\d+)/(.*)$", path)
    if block:
        key = next(k for k in _TIMM_NAMES if block.group(2).endswith(k))
        name, ndim = _TIMM_NAMES[key]
        return f"blocks.{block.group(1)}.{name}", ndim
    return _TIMM_NAMES[path]


def _timm_layer_ids(names, matcher):
    # timm.models._manipulate.group_with_matcher(..., reverse=True), as written there.
    compiled = []
    for ordinal, spec in enumerate(matcher.values()):
        for regex, suffix in (spec if isinstance(spec, list) else [(spec, None)]):
            compiled.append((re.compile(regex), (ordinal,), suffix))

    def grouping(name):
        for match, prefix, suffix in compiled:
            found = match.match(name)
            if found:
                return tuple(map(float, chain.from_iterable(filter(None, (prefix, found.groups(), suffix)))))
        return (float("inf"),)

    groups = defaultdict(list)
    for name in names:
        groups[grouping(name)].append(name)
    ids, lid = {}, -1
    for key in sorted(groups):
        if lid < 0 or key[-1] != 99999:
            lid += 1
        for name in groups[key]:
            ids[name] = lid
    return ids


@pytest.mark.parametrize("layout, matcher", [
    (dict(distillation_token=True), _DEIT_MATCHER),
    (dict(num_register_tokens=2, pooling="gap", norm_after_pooling=True), _VIT_MATCHER),
], ids=["deit", "registers-gap-fcnorm"])
def test_layer_decay_scales_and_weight_decay_are_timms_param_groups(layout, matcher):
    rate = 0.7
    model = tiny_vit(num_layers=3, **layout)
    timm = {v.path: _timm_name(v.path) for v in model.trainable_variables}
    ids = _timm_layer_ids(sorted({name for name, _ in timm.values()}), matcher)
    layer_max = max(ids.values())  # param_groups_layer_decay: scale = rate ** (layer_max - id)
    scales = layer_decay.learning_rate_scales(model, rate)
    for variable in model.trainable_variables:
        name, ndim = timm[variable.path]
        assert scales[variable.path] == pytest.approx(rate ** (layer_max - ids[name])), (variable.path, name)
        timm_decays = not (ndim <= 1 or any(fnmatch.fnmatch(name, p) for p in _TIMM_NO_WEIGHT_DECAY))
        assert layer_decay.uses_weight_decay(variable) == timm_decays, (variable.path, name)
    assert layer_max == 3 + 1 and ids["patch_embed.proj.weight"] == 0 and ids["head.weight"] == layer_max
    assert ids.get("norm.weight", 3) == 3 and ids.get("fc_norm.weight", layer_max) == layer_max  # norm: with the last block


def test_one_adamw_step_moves_each_variable_as_adamw_at_its_scaled_learning_rate():
    lr, wd, rate = 0.01, 0.1, 0.5
    config = resolve_config(TrainConfig(image_folder=None, variant="Ti/4", hidden_size=16, num_layers=2, num_heads=2,
                                        mlp_dim=32, image_size=16, channels=3, epochs=1, warmup_epochs=0,
                                        learning_rate=lr, weight_decay=wd, layer_decay=rate, clipnorm=0))
    model = randomize(build_model(config, 3), seed=3)
    optimizer = build_optimizer(config, updates_per_epoch=10, model=model)
    variables = model.trainable_variables
    before = [v.numpy().astype("float64") for v in variables]
    rng = np.random.default_rng(4)
    gradients = [rng.normal(0, 1e-2, v.shape).astype("float32") for v in variables]
    optimizer.apply(gradients, variables)
    scales = layer_decay.learning_rate_scales(model, rate)
    b1, b2, eps = optimizer.beta_1, optimizer.beta_2, optimizer.epsilon
    for variable, w, g in zip(variables, before, gradients):
        step_lr = lr * scales[variable.path]  # torch AdamW with the group's lr = lr * lr_scale
        if layer_decay.uses_weight_decay(variable):
            w = w * (1 - step_lr * wd)
        m, v = (1 - b1) * g, (1 - b2) * g.astype("float64") ** 2
        expected = w - step_lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=2e-5, atol=1e-8, err_msg=variable.path)
    moved = {v.path: np.abs(v.numpy() - w).max() for v, w in zip(variables, before)}
    assert moved["embedding/projection/kernel"] < 0.3 * moved["head/kernel"]  # embeddings lowest, head highest


# --------------------------------------------------------------------------- random erasing
def test_random_erasing_draws_timm_rectangles_of_standard_normal_noise():
    import tensorflow as tf

    size, samples, probability = 32, 600, 0.5
    image = tf.fill((size, size, 3), 5.0)  # a value the noise never takes exactly
    erased, areas, aspects, values = 0, [], [], []
    for index in range(samples):
        out = random_erasing(image, probability, tf.constant([7, index], tf.int64)).numpy()
        changed = out != 5.0
        if not changed.any():
            continue
        erased += 1
        rows, columns = np.nonzero(changed.any(axis=-1))
        h, w = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
        assert changed[rows.min():rows.max() + 1, columns.min():columns.max() + 1].all()  # one full rectangle
        assert h < size and w < size
        areas.append(h * w / size**2)
        aspects.append(h / w)
        values.append(out[changed])
    assert abs(erased / samples - probability) < 0.06
    # area uniform in [0.02, 1/3] of the image, log aspect uniform in (log 0.3, log 1/0.3), both then rounded
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.02 * 0.6 and areas.max() <= 1 / 3 * 1.35
    assert np.mean(areas) == pytest.approx((0.02 + 1 / 3) / 2, rel=0.12)
    assert aspects.min() >= 0.3 * 0.7 and aspects.max() <= 1 / 0.3 / 0.7
    assert (aspects < 0.5).any() and (aspects > 2).any() and np.median(np.log(aspects)) == pytest.approx(0, abs=0.2)
    noise = np.concatenate(values)
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(1.0, abs=0.02)
    again = random_erasing(image, probability, tf.constant([7, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(again, random_erasing(image, probability, tf.constant([7, 3], tf.int64)).numpy())


# --------------------------------------------------------------------------- distillation
def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("kind, alpha, tau", [("hard", 0.5, 1.0), ("soft", 0.5, 1.0), ("soft", 0.3, 3.0)])
def test_distillation_loss_is_deits_on_the_same_logits(kind, alpha, tau):
    rng = np.random.default_rng(5)
    batch, classes = 6, 4
    labels = np.eye(classes)[rng.integers(0, classes, batch)]
    outputs, outputs_kd, teacher = (rng.normal(0, 2, (batch, classes)) for _ in range(3))
    # deit/losses.py DistillationLoss.forward, base_criterion = cross-entropy with (one-hot) targets
    base_loss = np.mean(-np.sum(labels * _log_softmax(outputs), axis=1))
    if kind == "soft":
        log_s, log_t = _log_softmax(outputs_kd / tau), _log_softmax(teacher / tau)
        distillation = np.sum(np.exp(log_t) * (log_t - log_s)) * (tau * tau) / outputs_kd.size
    else:
        distillation = np.mean(-_log_softmax(outputs_kd)[np.arange(batch), teacher.argmax(axis=1)])
    expected = base_loss * (1 - alpha) + distillation * alpha
    got = distillation_loss(labels, outputs, outputs_kd, teacher, kind=kind, alpha=alpha, tau=tau)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_a_student_without_distillation_token_is_refused():
    with pytest.raises(ValueError, match="has no distillation token: build it with distillation_token=True"):
        attach_teacher(tiny_vit(), tiny_vit())


# --------------------------------------------------------------------------- the train flags
TINY = ["--variant", "Ti/4", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "32",
        "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--quiet"]


def _photos(root, classes=("cat", "dog", "owl"), per_class=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            pixels = np.clip(rng.normal(60 + 70 * index, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{n}.png")
    return root


def _train(tmp_path, name, folder, *flags):
    output = tmp_path / name
    argv = ["train", "--image-folder", str(folder), "--output", str(output), "--validation-fraction", "0.34", *TINY]
    assert cli.main([*argv, *flags]) == 0
    return output, json.loads((output / "config.json").read_text())


def _weights(path):
    from keras_vit.run_folder import load_model

    return {v.path: v.numpy() for v in load_model(path).trainable_variables}


@pytest.mark.slow
def test_train_ema_decay_saves_the_average_that_was_validated(tmp_path):
    folder = _photos(tmp_path / "photos")
    output, saved = _train(tmp_path, "ema", folder, "--ema-decay", "0.999", "--learning-rate", "0.05",
                           "--warmup-epochs", "0", "--label-smoothing", "0")  # evaluate() has no smoothing
    assert saved["optimization"]["ema_decay"] == 0.999
    config = resolve_config(TrainConfig.from_dict({k: v for k, v in saved.items() if k != "class_names"}))
    start = {v.path: v.numpy() for v in build_model(config, 3).trainable_variables}  # same seed, same start
    final = _weights(output / "model.keras")
    # AdamW at 0.05 moves weights by ~0.05 a step; the average at 0.999 by a thousandth of that.
    moved = max(np.abs(final[path] - start[path]).max() for path in start)
    assert 0 < moved < 2e-3
    # a finished run keeps one model (model.keras, the average); last.keras went with the run's end
    assert not (output / "checkpoints" / "last.keras").exists()
    history = (output / "history.csv").read_text().splitlines()
    val_loss = float(dict(zip(history[0].split(","), history[-1].split(",")))["val_loss"])
    from keras_vit.training.fit import evaluate

    assert evaluate(str(output), verbose=0)["loss"] == pytest.approx(val_loss, rel=1e-4)


@pytest.mark.slow
def test_train_layer_decay_moves_the_embedding_less_than_the_head(tmp_path):
    folder = _photos(tmp_path / "photos")
    output, saved = _train(tmp_path, "ld", folder, "--layer-decay", "0.1", "--learning-rate", "0.05",
                           "--warmup-epochs", "0")
    assert saved["optimization"]["layer_decay"] == 0.1
    config = resolve_config(TrainConfig.from_dict({k: v for k, v in saved.items() if k != "class_names"}))
    start = {v.path: v.numpy() for v in build_model(config, 3).trainable_variables}
    final = _weights(output / "model.keras")
    moved = {path: np.abs(final[path] - start[path]).max() for path in start}
    # scales 0.1 ** 2 for the embedding, 1 for the head (one block)
    assert 0 < moved["embedding/projection/kernel"] < 0.1 * moved["head/kernel"]


@pytest.mark.slow
def test_train_random_erasing_erases_the_runs_training_images(tmp_path):
    folder = _photos(tmp_path / "photos")
    output, saved = _train(tmp_path, "re", folder, "--random-erasing", "1.0")
    assert saved["data"]["random_erasing"] == 1.0
    config = resolve_config(TrainConfig.from_dict({k: v for k, v in saved.items() if k != "class_names"}))
    erased, _ = next(iter(build_datasets(config, 4).stream()))
    plain, _ = next(iter(build_datasets(config.replace(random_erasing=None), 4).stream()))
    changed = (erased.numpy() != plain.numpy()).any(axis=-1)
    for mask in changed:  # every image has exactly one rectangle replaced
        rows, columns = np.nonzero(mask)
        assert mask[rows.min():rows.max() + 1, columns.min():columns.max() + 1].all() and mask.sum() < mask.size


@pytest.mark.slow
def test_train_with_a_teacher_distils_into_the_distillation_token(tmp_path, capsys):
    folder = _photos(tmp_path / "photos")
    teacher, _ = _train(tmp_path, "teacher", folder)
    output, saved = _train(tmp_path, "student", folder, "--teacher", str(teacher / "model.keras"),
                           "--distillation", "soft", "--distillation-tau", "2")
    assert (saved["optimization"]["teacher"], saved["optimization"]["distillation"]) == (
        str(teacher / "model.keras"), "soft")
    from keras_vit.run_folder import load_model

    student = load_model(output / "model.keras")
    assert student.distillation_token and student.get_layer("head_dist").kernel.shape == (16, 3)
    assert np.abs(student.get_layer("head_dist").kernel.numpy()).max() > 0  # trained from zero
    other = _photos(tmp_path / "other", classes=("ant", "bee", "cow"))
    argv = ["train", "--image-folder", str(other), "--output", str(tmp_path / "refused"), "--validation-fraction",
            "0.34", *TINY, "--teacher", str(teacher / "model.keras")]
    assert cli.main(argv) == 2
    assert "has classes ['cat', 'dog', 'owl']; the data has ['ant', 'bee', 'cow']" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
