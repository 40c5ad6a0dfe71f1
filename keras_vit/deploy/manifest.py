"""The manifest of an export folder: written by export, read (when it can be trusted) by
the artifact readers, shown as a Markdown table.

Each artifact's entry records its ``sha256`` (:func:`artifact_checksum`); a reader trusts
the manifest beside a file only when that checksum matches, so a manifest copied beside
another export's files says nothing about them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from keras_vit.deploy.layout import DEFAULT_TOLERANCES, LABELS_FILENAME, MANIFEST_FILENAME
from keras_vit.deploy.recommend import recommend
from keras_vit.files import write_json
from keras_vit.markdown import markdown_table

logger = logging.getLogger(__name__)


def artifact_checksum(path) -> str:
    """SHA-256 (hex) of an exported file; of a SavedModel folder, of its ``saved_model.pb``.

    ``keras-vit export`` records it in the manifest as each artifact's ``sha256``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "saved_model.pb")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def size_bytes(path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def write_manifest(folder, serving, *, artifacts, data, source_model, export_dir, bytes_signature, tolerances,
                   reference_scale, latency, samples):
    """Writes ``folder/manifest.json`` for the verified ``artifacts`` entries and returns it."""
    import tensorflow as tf

    from keras_vit.version import __version__

    spec = serving.image_spec
    manifest = {
        "keras_vit_version": __version__,
        "tensorflow_version": tf.__version__,
        "source_model": source_model,
        "export_dir": export_dir,
        "image_size": list(serving.input_shape[:2]),
        "channels": serving.input_shape[2],
        "input_range": serving.input_range,
        "image_spec": {**spec.to_dict(), "description": spec.describe()},
        "preprocessing": "decode upright (EXIF orientation), " + spec.describe(),
        "bytes_signature_max_pixels": serving.max_pixels if bytes_signature else None,
        "num_classes": serving.num_classes,
        "class_names": list(serving.class_names),
        "output_kind": serving.output_kind,
        "labels_file": LABELS_FILENAME,
        "verification_data": data.get("source"),
        "tolerances": {**DEFAULT_TOLERANCES, **(tolerances or {})},
        "keras_max_abs_output": reference_scale,
        "artifacts": artifacts,
        "latency": latency,
        "recommended": recommend(artifacts),
        "samples": samples,
    }
    write_json(os.path.join(folder, MANIFEST_FILENAME), manifest)
    return manifest


def read_beside(folder, artifact_path=None):
    """``(manifest or None, labels.txt path or None)`` of an export folder; the manifest
    only when it records ``artifact_path``'s checksum (a warning says why it is not used)."""
    manifest, labels = None, None
    manifest_path = os.path.join(folder, MANIFEST_FILENAME)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as file:
            try:
                manifest = json.load(file)
            except json.JSONDecodeError:
                manifest = None
        if manifest is not None and not isinstance(manifest, dict):
            raise ValueError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not the object a keras-vit "
                             f"manifest is; remove it or export again.")
        problem = _untrusted(manifest, artifact_path)
        if problem:
            logger.warning("Ignoring %s: %s; its class names, input range and output kind are not used "
                           "(export the model again to get a manifest that fits).", manifest_path, problem)
            manifest = None
    labels_path = os.path.join(folder, LABELS_FILENAME)
    if os.path.isfile(labels_path):
        labels = labels_path
    return manifest, labels


def _untrusted(manifest, artifact_path):
    """Why ``manifest`` may not describe ``artifact_path``, or None when it records its checksum."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        return "it is not a keras-vit export manifest"
    if artifact_path is None:
        return None
    name = os.path.basename(os.path.normpath(artifact_path))
    entry = next((e for e in manifest["artifacts"] if isinstance(e, dict) and e.get("file") == name), None)
    if entry is None:
        return f"it lists no artifact named {name!r}"
    if "sha256" not in entry:
        return f"it records no checksum (sha256) for {name!r}"
    if entry["sha256"] != artifact_checksum(artifact_path):
        return f"{name!r} is not the file it describes (its sha256 differs from the manifest's)"
    return None


def _ms(entry, label):
    value = entry.get("latency_ms", {}).get(label)
    if value is None and label == "all_threads":  # a SavedModel runs on TensorFlow's own pools
        value = entry.get("latency_ms", {}).get("process_threads")
    return f"{value:.2f}" if isinstance(value, float) else "-"


def _row(entry):
    figures = entry.get("parity", {})
    accuracy = figures.get("accuracy")
    return [
        entry["file"],
        entry["format"],
        entry["precision"],
        f"{entry['size_bytes'] / 1024:,.0f}" if "size_bytes" in entry else "-",
        _ms(entry, "1_thread"),
        _ms(entry, "all_threads"),
        f"{figures['max_abs_diff']:.2e}" if "max_abs_diff" in figures else "-",
        f"{figures['top1_agreement']:.2%}" if "top1_agreement" in figures else "-",
        "-" if accuracy is None else f"{accuracy:.2%} (Keras {figures['keras_accuracy']:.2%})",
        "yes" if entry.get("verified") else "NO",
    ]


def format_manifest(manifest):
    """A Markdown table of a manifest's artifacts (size, latency, parity, verification) and
    the recommended file for each target."""
    latency = manifest.get("latency") or {}
    threads = latency.get("threads", {}).get("all_threads", "all")
    header = ["file", "format", "precision", "size (KiB)", "ms 1 thread", f"ms {threads} threads",
              "max abs diff", "top-1 agreement", "accuracy", "verified"]
    lines = [markdown_table(header, [_row(entry) for entry in manifest["artifacts"]])]
    lines.append(f"\nArtifacts in {manifest['export_dir']}; verified on {manifest['verification_data']}.")
    if latency:
        lines.append(f"Latency: batch 1, median of {latency['runs']} runs, measured {latency['measured_on']}.")
    recommended = manifest.get("recommended") or {}
    if recommended:
        lines.append("\nRecommended:")
        for target, choice in recommended.items():
            lines.append(f"- {target}: {choice['file'] or 'none'} ({choice['reason']})")
    return "\n".join(lines)
