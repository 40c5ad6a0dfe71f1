"""Images as a viewer shows them: EXIF orientation applied wherever files are decoded, and
one list of accepted formats for training and prediction."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import randomize, tiny_vit
from keras_vit.data.decode import ACCEPTED_FORMATS, decode_upright, exif_orientation
from keras_vit.data.pipelines import image_folder, scan_image_folder
from keras_vit.deploy.predict import predict_files

# PIL's ImageOps.exif_transpose table: orientation -> the transpose that makes it upright.
PIL_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _rotated_jpeg(orientation, height=16, width=24, seed=0):
    """JPEG bytes of a (height, width) image tagged with an EXIF orientation."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _upright_copy(encoded, orientation):
    """The JPEG's own decoded pixels turned upright by PIL (as a viewer shows them)."""
    image = Image.fromarray(tf.io.decode_jpeg(encoded).numpy())
    return image.transpose(PIL_UPRIGHT[orientation]) if orientation in PIL_UPRIGHT else image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_upright_turns_each_orientation_as_pil(orientation):
    encoded = _rotated_jpeg(orientation)
    assert int(exif_orientation(tf.constant(encoded))) == orientation
    upright = decode_upright(tf.constant(encoded), 3).numpy()
    np.testing.assert_array_equal(upright, np.asarray(_upright_copy(encoded, orientation)))
    traced = tf.function(lambda data: decode_upright(data, 3))(tf.constant(encoded)).numpy()
    np.testing.assert_array_equal(traced, upright)


def test_files_without_orientation_read_upright():
    png = io.BytesIO()
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(png, "PNG")
    assert int(exif_orientation(tf.constant(png.getvalue()))) == 1
    assert int(exif_orientation(tf.constant(b"\xff\xd8\xff\xe1\x00"))) == 1  # truncated: upright, no error


def _orientation_files(folder):
    """For orientations 3, 6, 8: the tagged JPEG, its upright PNG copy and a sideways PNG."""
    os.makedirs(folder / "a", exist_ok=True)
    os.makedirs(folder / "b", exist_ok=True)
    rows = []
    for orientation in (3, 6, 8):
        encoded = _rotated_jpeg(orientation, seed=orientation)
        jpeg, upright, sideways = folder / "a" / f"o{orientation}.jpg", folder / "b" / f"o{orientation}.png", folder / f"o{orientation}_raw.png"
        jpeg.write_bytes(encoded)
        _upright_copy(encoded, orientation).save(upright)
        Image.fromarray(tf.io.decode_jpeg(encoded).numpy()).save(sideways)
        rows.append((str(jpeg), str(upright), str(sideways)))
    return rows


@pytest.mark.slow
def test_an_exif_rotated_jpeg_predicts_as_its_upright_copy(tmp_path):
    from keras_vit.deploy.export import export_savedmodel

    # ImageNet mean/std and a bicubic crop: the spec's whole path, not the [-1, 1] identity.
    model = randomize(tiny_vit(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225),
                               interpolation="bicubic", crop_fraction=0.875))
    keras_file = str(tmp_path / "model.keras")
    model.save(keras_file)
    rows = _orientation_files(tmp_path / "images")

    def probabilities(paths):
        result = predict_files(keras_file, paths, top_k=5)
        assert result["errors"] == []
        return np.array([[c["probability"] for c in sorted(p["top_k"], key=lambda c: c["class_id"])]
                         for p in result["predictions"]])

    jpegs, uprights, sideways = (probabilities([row[i] for row in rows]) for i in range(3))
    np.testing.assert_allclose(jpegs, uprights, atol=1e-6)
    assert np.abs(jpegs - sideways).max() > 1e-3  # read as stored, they would differ

    # The training and evaluation pipelines: validation batches of a/ (JPEGs) and b/ (upright PNGs).
    data = image_folder(str(tmp_path / "images"), 6, validation_directory=str(tmp_path / "images"),
                        image_size=16, image_spec=model.image_spec)
    images, labels = next(iter(data.validation))
    order = np.argmax(labels.numpy(), -1)
    np.testing.assert_allclose(images.numpy()[order == 0], images.numpy()[order == 1], atol=1e-5)

    # The SavedModel's bytes signature.
    export_savedmodel(model, str(tmp_path / "sm"), list("abcde"))
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    encoded = [open(path, "rb").read() for row in rows for path in row[:2]]
    served = serve(images=tf.constant(encoded))["probabilities"].numpy()
    np.testing.assert_allclose(served[0::2], served[1::2], atol=1e-6)
    np.testing.assert_allclose(served[0::2], jpegs, atol=1e-5)


def test_training_and_predict_accept_the_same_formats_and_refuse_others_alike(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("cat/one.bmp", "cat/two.gif", "dog/three.png", "dog/four.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / name)
    paths, _, _, skipped = scan_image_folder(str(tmp_path), verbose=False)
    assert sorted(os.path.basename(p) for p in paths) == ["one.bmp", "three.png", "two.gif"]
    webp = str(tmp_path / "dog" / "four.webp")
    [(skipped_path, training_reason)] = skipped
    assert skipped_path == webp and ".webp" in training_reason and ACCEPTED_FORMATS in training_reason

    model = str(tmp_path / "model.keras")
    tiny_vit().save(model)
    result = predict_files(model, [str(tmp_path)])  # a folder: accepted files predicted, the .webp named
    assert sorted(os.path.basename(p["file"]) for p in result["predictions"]) == ["one.bmp", "three.png", "two.gif"]
    assert result["errors"] == [{"file": webp, "error": training_reason}]
    assert predict_files(model, [webp])["errors"] == [{"file": webp, "error": training_reason}]
