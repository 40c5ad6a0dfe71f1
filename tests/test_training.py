"""keras_vit.training: configuration checks, the run folder, NaN stop, gradient accumulation,
MirroredStrategy on 2 logical CPUs, and resuming a run killed with SIGKILL (real processes)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from keras_vit import cli
from keras_vit.training.config import TrainConfig, load_config_file
from keras_vit.training.resolution import resolve_config
from keras_vit.training.fit import evaluate, train
from keras_vit.training.recipes import build_model, build_optimizer, compile_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny ViT that trains a few steps in seconds.
TINY = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, batch_size=32)


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}


def _history(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# --------------------------------------------------------------------------- configuration


def test_defaults_resolve_to_the_small_mnist_vit():
    config = resolve_config(TrainConfig())
    assert (config.variant, config.patch_size, config.hidden_size, config.num_layers) == ("Ti/4", 4, 64, 4)
    assert (config.image_size, config.channels, config.crop, config.flip) == (28, 1, "translate", False)
    assert config.run_name == "mnist_vit-ti4" and config.learning_rate > 0 and config.warmup_epochs > 0


def test_finetune_recipe_follows_the_paper():
    # Its defaults suit a folder of photos on a CPU; the paper's 384 px and batch 512 are two flags.
    default = resolve_config(TrainConfig(recipe="finetune", dataset="cifar10", variant="B/16"))
    assert (default.image_size, default.total_batch_size, default.batch_size, default.epochs) == (224, None, 32, 10)
    config = resolve_config(TrainConfig(recipe="finetune", dataset="cifar10", variant="B/16", epochs=10,
                                        image_size=384, total_batch_size=512))
    assert (config.image_size, config.total_batch_size, config.weight_decay, config.clipnorm) == (384, 512, 0.0, 1.0)
    optimizer = build_optimizer(config, updates_per_epoch=100, accumulation=4)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert optimizer.global_clipnorm == 1.0 and optimizer.gradient_accumulation_steps == 4
    # Keras steps a schedule per micro-batch; the wrapper steps it per update (4 micro-batches).
    def rate_at_update(update):
        return float(optimizer._learning_rate(4 * update + 3))

    # Linear warm-up over 10% of the updates, then cosine decay to 0.
    assert rate_at_update(0) == 0.0
    assert rate_at_update(100) == pytest.approx(config.learning_rate)
    assert rate_at_update(50) == pytest.approx(config.learning_rate / 2)
    assert rate_at_update(1000) == pytest.approx(0.0, abs=1e-9)
    scratch = build_optimizer(resolve_config(TrainConfig(epochs=10)), updates_per_epoch=10)
    assert isinstance(scratch, keras.optimizers.AdamW) and scratch.weight_decay == 0.05


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(recipe="adam"), "recipe='adam'"),
        (dict(epochs=0), "epochs=0"),
        (dict(epochs=2.5), "epochs=2.5"),
        (dict(batch_size=-8), "batch_size=-8"),
        (dict(learning_rate=0), "learning_rate=0"),
        (dict(learning_rate="fast"), "learning_rate='fast'"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
        (dict(label_smoothing=1.0), "label_smoothing=1.0"),
        (dict(warmup_epochs=30, epochs=30), "warmup_epochs=30"),
        (dict(clipnorm=-1), "clipnorm=-1"),
        (dict(strategy="cluster"), "strategy='cluster'"),
        (dict(precision="float8"), "precision='float8'"),
        (dict(jit_compile="sometimes"), "jit_compile='sometimes'"),
        (dict(crop="random"), "crop='random'"),
        (dict(flip="yes"), "flip='yes'"),
        (dict(image_size=30), "image_size=30"),
        (dict(channels=2), "channels=2"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(variant="Q/16"), "variant='Q/16'"),
        (dict(pooling="max"), "pooling='max'"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(randaugment=[2]), "randaugment=[2]"),
        (dict(mixup=0), "mixup=0"),
        (dict(total_batch_size=0), "total_batch_size=0"),
        (dict(total_batch_size=100, batch_size=128), "total_batch_size=100; expected at least batch_size=128"),
        (dict(steps_per_epoch=0), "steps_per_epoch=0"),
        (dict(validation_fraction=1.0), "validation_fraction=1.0"),
        (dict(validation_folder="val"), "validation_folder='val'"),
        (dict(eval_crop_fraction=0), "eval_crop_fraction=0"),
        (dict(seed=-1), "seed=-1"),
        (dict(run_name="a/b"), "run_name='a/b'"),
        (dict(download="no"), "download='no'"),
    ],
)
def test_every_invalid_field_is_refused_by_name(fields, message):
    with pytest.raises(ValueError, match="Invalid configuration: " + message.replace("[", r"\[").replace("]", r"\]")):
        resolve_config(TrainConfig(**fields))


def test_config_files_and_unknown_fields(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nlearning_rate: 0.002\nrandaugment: [2, 0.5]\n")
    config = load_config_file(str(tmp_path / "run.yaml"))
    assert (config.epochs, config.learning_rate, config.randaugment) == (3, 0.002, [2, 0.5])
    (tmp_path / "run.json").write_text(json.dumps({"batch_size": 16, "recipe": "finetune"}))
    assert load_config_file(str(tmp_path / "run.json")).batch_size == 16
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['epochz'\]"):
        load_config_file(str(tmp_path / "bad.yaml"))
    (tmp_path / "run.txt").write_text("epochs: 3")
    with pytest.raises(ValueError, match="must end in .yaml, .yml or .json; got '.txt'"):
        load_config_file(str(tmp_path / "run.txt"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config_file(str(tmp_path / "missing.yaml"))


def test_cli_refuses_invalid_configuration_before_training(tmp_path, capsys):
    output = tmp_path / "run"
    assert cli.main(["train", "--epochs", "0", "--output", str(output)]) == 2
    assert "keras-vit train: error: Invalid configuration: epochs=0" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("batch_sise: 8\n")
    assert cli.main(["train", "--config", str(tmp_path / "cfg.yaml"), "--output", str(output)]) == 2
    assert "Unknown field(s) ['batch_sise']" in capsys.readouterr().err
    assert cli.main(["train", "--image-folder", str(tmp_path / "nowhere"), "--output", str(output)]) == 2
    assert "nowhere" in capsys.readouterr().err
    # An empty value is refused by name, not read as "no image folder" (which would train on MNIST).
    assert cli.main(["train", "--image-folder", "", "--output", str(output)]) == 2
    assert "Invalid configuration: image_folder=''; expected a non-empty string" in capsys.readouterr().err
    assert not output.exists()


# --------------------------------------------------------------------------- run folder


@pytest.mark.slow
def test_run_folder_contents_evaluate_and_no_overwrite(tmp_path, capsys):
    output = tmp_path / "run"
    metrics = train(TrainConfig(**TINY, epochs=2, steps_per_epoch=3, output=str(output)), verbose=0)
    for name in ("model.keras", "config.json", "history.csv", "training_curves.png", "metrics.json"):
        assert (output / name).is_file(), name
    # One model file: last.keras is model.keras now, best.keras stays only for a best epoch that was not the last.
    assert not (output / "checkpoints" / "last.keras").exists()
    rows = _history(output / "history.csv")
    best_was_last = float(rows[-1]["val_accuracy"]) >= max(float(row["val_accuracy"]) for row in rows)
    assert (output / "checkpoints" / "best.keras").is_file() != best_was_last
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(output / "logs" / "validation"))
    assert not (output / "backup").exists()  # the resumable state goes once the run has finished
    rows = _history(output / "history.csv")
    assert [row["epoch"] for row in rows] == ["0", "1"]
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["optimizer_steps"] == 6 and saved["epochs"] == 2
    assert saved["val_accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]))
    assert saved["train_seconds"] > 0 and saved["images_per_second"] > 0
    assert metrics["run_dir"] == str(output)
    config = json.loads((output / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["optimization"]["warmup_epochs"] == pytest.approx(0.2)
    assert config["class_names"] == [str(digit) for digit in range(10)]

    # evaluate (library and command) gives the final validation accuracy back.
    result = evaluate(str(output), verbose=0)
    assert result["examples"] == 1000 and result["accuracy"] == pytest.approx(saved["val_accuracy"], abs=1e-6)
    assert cli.main(["evaluate", str(output / "model.keras")]) == 0
    assert f"Held-out accuracy: {saved['val_accuracy']:.4f} on 1000 images" in capsys.readouterr().out

    # A finished run is never overwritten without --overwrite.
    before = (output / "model.keras").read_bytes()
    with pytest.raises(ValueError, match="holds a finished run.*--overwrite"):
        train(TrainConfig(**TINY, epochs=2, steps_per_epoch=3, output=str(output)), verbose=0)
    assert (output / "model.keras").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="has no model.keras"):
        evaluate(str(tmp_path))


def test_existing_folders_are_protected(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a keras-vit run .*it holds notes.txt.*nothing in it is touched"):
        train(TrainConfig(**TINY, epochs=1, output=str(precious)), verbose=0)
    # --overwrite replaces keras-vit runs only: a folder of the user's own files stays.
    with pytest.raises(ValueError, match="--overwrite replaces only keras-vit runs"):
        train(TrainConfig(**TINY, epochs=1, output=str(precious)), overwrite=True, verbose=0)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        train(TrainConfig(**TINY, epochs=1, output=str(tmp_path / "new")), resume=True, verbose=0)
    # An unfinished run with another configuration is refused, naming the field.
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    config = resolve_config(TrainConfig(**TINY, epochs=2, output=str(unfinished)))
    (unfinished / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(ValueError, match="another configuration \\(epochs: 2 -> 3, warmup_epochs: 0.2 -> 0.3\\)"):
        train(TrainConfig(**TINY, epochs=3, output=str(unfinished)), verbose=0)


@pytest.mark.slow  # trains
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    output = tmp_path / "nan"
    # The warm-up starts at lr 0, so epoch 1 is finite; then lr 1e36 overflows the weights.
    config = TrainConfig(**TINY, epochs=4, steps_per_epoch=2, warmup_epochs=2, learning_rate=1e36, output=str(output))
    with pytest.raises(RuntimeError, match=r"loss became nan at epoch 2, step \d.*last good epoch \(1\) is kept"):
        train(config, verbose=0)
    assert len(_history(output / "history.csv")) == 1
    assert not (output / "model.keras").exists() and not (output / "metrics.json").exists()
    kept = keras.saving.load_model(output / "checkpoints" / "last.keras", compile=False)
    assert all(np.isfinite(w).all() for w in kept.get_weights())


# --------------------------------------------------------------------------- one preparation for both loops


def test_prepare_computes_the_batch_arithmetic_and_numerics_once(tmp_path):
    import dataclasses

    import tensorflow as tf

    from keras_vit.training.preparation import build_trainee, prepare

    config = resolve_config(TrainConfig(**TINY, epochs=2, precision="mixed_bfloat16", jit_compile="on",
                                        layer_decay=0.75, output=str(tmp_path / "run")))
    prepared = prepare(config, tf.distribute.get_strategy(), verbose=0)
    assert (prepared.replicas, prepared.global_batch, prepared.accumulation) == (1, 32, 1)
    assert prepared.steps_per_epoch == prepared.datasets.train_examples // 32
    assert (prepared.policy, prepared.jit_compile) == ("mixed_bfloat16", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepared.global_batch = 64
    with prepared.precision():
        model = build_trainee(prepared)
    assert keras.config.dtype_policy().name == "float32"  # restored after the build
    assert model.dtype_policy.name == "mixed_bfloat16" and model.optimizer.learning_rate_scales


def test_multiworker_refuses_distillation_by_name_before_any_work(tmp_path, monkeypatch):
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(b"")  # only its existence is checked before the refusal
    monkeypatch.delenv("TF_CONFIG", raising=False)  # refused before TF_CONFIG is even read
    config = TrainConfig(**TINY, strategy="multiworker", teacher=str(teacher), output=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"teacher='.*teacher.keras' \(distillation\) is not supported by the "
                                         r"multi-worker loop"):
        train(config, verbose=0)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- gradient accumulation


@pytest.mark.slow  # trains
def test_gradient_accumulation_over_4_micro_batches_equals_one_large_batch():
    config = resolve_config(TrainConfig(**TINY, recipe="finetune", epochs=2, warmup_epochs=0, learning_rate=0.05))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (32, 28, 28, 1)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]

    def fitted(batch_size, accumulation):
        model = build_model(config, num_classes=10)
        head = model.get_layer("head")  # A non-zero head so that every layer gets a gradient.
        head.set_weights([np.random.default_rng(1).normal(0, 0.1, w.shape).astype("float32") for w in head.get_weights()])
        start = [w.copy() for w in model.get_weights()]
        compile_model(model, config, build_optimizer(config, updates_per_epoch=10, accumulation=accumulation))
        model.fit(images, labels, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        return start, model

    start_large, large = fitted(32, 1)
    start_micro, micro = fitted(8, 4)
    for a, b in zip(start_large, start_micro):
        np.testing.assert_array_equal(a, b)
    assert int(micro.optimizer.iterations) == int(large.optimizer.iterations) == 1
    unchanged = []
    for before, variable, w_micro in zip(start_large, large.weights, micro.get_weights()):
        w_large = variable.numpy()
        np.testing.assert_allclose(w_micro, w_large, rtol=1e-4, atol=1e-6)
        if np.allclose(before, w_large):
            unchanged.append(variable.path)
    # Every weight moved except the attention's key bias, whose gradient is zero (softmax is shift-invariant).
    assert len(unchanged) == 1 and unchanged[0].endswith("key/bias"), unchanged


# --------------------------------------------------------------------------- MirroredStrategy


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_vit.training.config import TrainConfig
        from keras_vit.training.resolution import resolve_config
        from keras_vit.training.fit import train
        from keras_vit.training.recipes import build_model, build_optimizer, build_strategy, compile_model
        config = resolve_config(TrainConfig(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, epochs=2,
                                            warmup_epochs=0, clipnorm=0.5, output="unused"))
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (32, 28, 28, 1)).astype("float32")
        labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]
        head = [rng.normal(0, 1.0, shape).astype("float32") for shape in ((32, 10), (10,))]
        results = {{}}
        for name in ("default", "mirrored"):
            strategy = build_strategy(name)
            with strategy.scope():
                model = build_model(config, 10)
                model.get_layer("head").set_weights(head)  # non-zero, so the first loss depends on the weights
                compile_model(model, config, build_optimizer(config, 10, replicas=strategy.num_replicas_in_sync))
            # A fixed order of two global batches of 16 (the library's shuffled pipelines are
            # re-instantiated by the strategy, so their first order is not comparable).
            data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
            history = model.fit(data, epochs=1, verbose=0, callbacks=[__import__("keras").callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs, out=results.setdefault(name, []): out.append(float(logs["loss"])))])
            results[name + "_replicas"] = strategy.num_replicas_in_sync
            results[name + "_weights"] = float(sum(np.abs(w).sum() for w in model.get_weights()))
        run = train(TrainConfig(strategy="mirrored", batch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                                mlp_dim=64, epochs=1, steps_per_epoch=3, output={str(tmp_path / "two")!r}), verbose=0)
        results["run"] = run
        print(json.dumps(results))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["default_replicas"], result["mirrored_replicas"]) == (1, 2)
    first_default, first_mirrored = result["default"][0], result["mirrored"][0]
    assert abs(first_default - np.log(10)) > 0.1  # a real loss, not the zero-head ln(10)
    assert first_mirrored == pytest.approx(first_default, rel=1e-6)
    # After one update (clipped at the global norm of the all-reduced gradient) they still agree.
    assert result["mirrored"][1] == pytest.approx(result["default"][1], rel=1e-5)
    assert result["mirrored_weights"] == pytest.approx(result["default_weights"], rel=1e-5)
    run = result["run"]
    assert (run["replicas"], run["global_batch_size"], run["optimizer_steps"]) == (2, 16, 3)


# --------------------------------------------------------------------------- SIGKILL and resume


@pytest.mark.slow
def test_run_killed_with_sigkill_mid_epoch_resumes_and_ends_with_the_same_step_count(tmp_path):
    output = tmp_path / "killed"
    epochs, steps = 4, 40
    command = [
        sys.executable, "-m", "keras_vit.cli", "train", "--hidden-size", "32", "--num-layers", "1",
        "--num-heads", "2", "--mlp-dim", "64", "--batch-size", "32", "--epochs", str(epochs),
        "--steps-per-epoch", str(steps), "--output", str(output), "--quiet",
    ]  # fmt: skip
    history, state = output / "history.csv", output / "backup" / "state.json"

    def epochs_done():  # the backup's state is written last at an epoch's end: it says the epoch is done
        try:
            return json.loads(state.read_text())["epoch"]
        except (FileNotFoundError, ValueError):
            return 0

    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if epochs_done() >= 2:
                break
            time.sleep(0.05)
        rows = _history(history)
        assert process.poll() is None and len(rows) == 2, "the run should be in its third epoch"
        # Kill 40% into the third epoch, measured from the second one's length.
        time.sleep(0.4 * float(rows[-1]["epoch_seconds"]))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert len(_history(history)) == 2 and not (output / "metrics.json").exists()
    state = json.loads((output / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (2, 0)  # SIGKILL gives no warning: the last epoch's backup

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "(resuming after epoch 2)" in resumed.stdout
    assert "Epoch 3/4" in resumed.stdout and "Epoch 1/4" not in resumed.stdout
    assert [row["epoch"] for row in _history(history)] == ["0", "1", "2", "3"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["resumed_after_epoch"] == 2

    uninterrupted = train(
        TrainConfig(**{**TINY, "batch_size": 32}, epochs=epochs, steps_per_epoch=steps, output=str(tmp_path / "whole")),
        verbose=0,
    )
    assert metrics["optimizer_steps"] == uninterrupted["optimizer_steps"] == epochs * steps


@pytest.mark.slow  # trains
def test_precision_and_jit_compile_resolution_and_a_bfloat16_run(tmp_path):
    from keras_vit.training.recipes import resolve_jit_compile, resolve_precision

    assert [resolve_precision("auto", d) for d in ("gpu", "tpu", "cpu")] == ["mixed_float16", "mixed_bfloat16", "float32"]
    assert resolve_precision("mixed_bfloat16", "cpu") == "mixed_bfloat16"
    assert [resolve_jit_compile("auto", d) for d in ("gpu", "tpu", "cpu")] == [True, True, False]
    assert resolve_jit_compile("on", "cpu") is True and resolve_jit_compile("off", "gpu") is False
    output = tmp_path / "bf16"
    metrics = train(TrainConfig(**TINY, epochs=1, steps_per_epoch=2, precision="mixed_bfloat16", output=str(output)), verbose=0)
    assert metrics["precision"] == "mixed_bfloat16" and np.isfinite(metrics["val_loss"])
    # Mixed precision keeps float32 variables: the saved model holds float32 weights.
    model = keras.saving.load_model(output / "model.keras", compile=False)
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in model.get_weights())
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


@pytest.mark.slow  # trains
def test_finetune_from_an_npz_checkpoint_with_zero_head_and_accumulation(tmp_path):
    from keras_vit.weights.npz import from_npz

    checkpoint = os.path.join(REPO, "tests", "data", "vit_token.npz")
    architecture = dict(variant="Ti/8", hidden_size=48, num_heads=3, mlp_dim=96, num_layers=2, image_size=32)
    config = TrainConfig(
        **architecture, recipe="finetune", weights=checkpoint, channels=3, batch_size=16, total_batch_size=32,
        epochs=1, steps_per_epoch=4, output=str(tmp_path / "finetune"),
    )  # fmt: skip
    resolved = resolve_config(config)
    assert (resolved.crop, resolved.flip, resolved.weight_decay) == ("translate", False, 0.0)
    start = build_model(resolved, num_classes=10)
    reference = from_npz(checkpoint)
    np.testing.assert_array_equal(
        start.get_layer("encoderblock_1").get_weights()[0], reference.get_layer("encoderblock_1").get_weights()[0]
    )
    assert all(not w.any() for w in start.get_layer("head").get_weights())  # zero-initialised head
    metrics = train(config, verbose=0)
    assert (metrics["accumulation_steps"], metrics["optimizer_steps"]) == (2, 2)
    tuned = keras.saving.load_model(tmp_path / "finetune" / "model.keras", compile=False)
    assert any(w.any() for w in tuned.get_layer("head").get_weights())


@pytest.mark.slow  # trains two runs
def test_overwrite_keeps_the_old_run_until_its_replacement_has_finished(tmp_path):
    output = tmp_path / "run"
    train(TrainConfig(**TINY, epochs=1, steps_per_epoch=2, output=str(output)), verbose=0)
    before = {name: (output / name).read_bytes() for name in ("model.keras", "metrics.json", "config.json")}
    # A replacement that fails (its loss becomes NaN) leaves the finished run exactly as it was.
    with pytest.raises(RuntimeError, match="Training stopped"):
        train(TrainConfig(**TINY, epochs=2, steps_per_epoch=2, warmup_epochs=0, learning_rate=1e36, output=str(output)),
              overwrite=True, verbose=0)
    assert {name: (output / name).read_bytes() for name in before} == before
    # One that finishes takes its place, and nothing of the old run or the replacement is left beside it.
    metrics = train(TrainConfig(**TINY, epochs=2, steps_per_epoch=2, output=str(output)), overwrite=True, verbose=0)
    assert metrics["run_dir"] == str(output) and metrics["epochs"] == 2
    assert json.loads((output / "metrics.json").read_text())["epochs"] == 2
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.slow  # trains
def test_a_finished_run_with_a_torn_model_file_is_repaired_from_its_last_checkpoint(tmp_path, caplog):
    output = tmp_path / "run"
    metrics = train(TrainConfig(**TINY, epochs=1, steps_per_epoch=2, output=str(output)), verbose=0)
    os.makedirs(output / "checkpoints", exist_ok=True)  # runs of earlier versions kept last.keras
    shutil.copyfile(output / "model.keras", output / "checkpoints" / "last.keras")
    (output / "model.keras").write_bytes(b"")  # what a kill mid-save left before writes were atomic
    with caplog.at_level("WARNING", logger="keras_vit.run_folder"):
        result = evaluate(str(output), verbose=0)
    assert result["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert "model.keras was damaged (not a whole .keras file); restored from" in caplog.text
    assert (output / "model.keras").read_bytes() == (output / "checkpoints" / "last.keras").read_bytes()
    (output / "model.keras").unlink()
    (output / "checkpoints" / "last.keras").write_bytes(b"PK")
    with pytest.raises(ValueError, match="model.keras is missing and no whole checkpoint can replace it"):
        evaluate(str(output), verbose=0)
