"""The patch record format shared by extract, balance, train and evaluate.

One ``tf.train.Example`` per patch:

=============  ======  =================================================
key            type    meaning
=============  ======  =================================================
image          bytes   8-bit grayscale PNG, ``image_size`` x ``image_size``
label          int64   class index into ``CLASS_NAMES``
label_name     bytes   class name
patch_id       bytes   unique id of the patch (``<case_id>`` or ``<case_id>#<k>``)
case_id        bytes   the ``cases`` row it came from
patient_id     bytes   de-identified dataset patient id
split          bytes   official split of the case (train / test)
source         bytes   cbis-ddsm | ddsm-normal
=============  ======  =================================================

TensorFlow is imported lazily so that the data steps can fork worker processes before it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

STRING_KEYS = ("label_name", "patch_id", "case_id", "patient_id", "split", "source")


def serialize_patch(png: bytes, label: int, meta: dict[str, str]) -> bytes:
    import tensorflow as tf

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    from mammo.components.config import CLASS_NAMES

    meta = {"label_name": CLASS_NAMES[int(label)], **meta}
    feature = {"image": b(png), "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
    for key in STRING_KEYS:
        feature[key] = b(str(meta.get(key, "")).encode())
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path: str | Path, records: Iterable[bytes]) -> int:
    import tensorflow as tf

    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for rec in records:
            writer.write(rec)
            n += 1
    return n


def iter_records(paths: Iterable[str | Path]) -> Iterator[bytes]:
    """Serialized records of the given files, in order."""
    import tensorflow as tf

    for p in paths:
        for rec in tf.data.TFRecordDataset(str(p)).as_numpy_iterator():
            yield rec


def parse_fn(image_size: int, dtype=None):
    """A tf.data map function: serialized Example -> (image [S,S,1] in 0..255, label int).

    The image is float32 unless ``dtype`` says otherwise (training caches ``tf.uint8`` patches).
    """
    import tensorflow as tf

    dtype = dtype or tf.float32

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        img = tf.io.decode_png(ex["image"], channels=1)
        img = tf.ensure_shape(img, [image_size, image_size, 1])
        return tf.cast(img, dtype), ex["label"]

    return parse


def parse_example(serialized: bytes) -> dict:
    """Decode one serialized record into a plain dict (for tests and reports)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    out = {"image": f["image"].bytes_list.value[0], "label": int(f["label"].int64_list.value[0])}
    for key in STRING_KEYS:
        out[key] = f[key].bytes_list.value[0].decode()
    return out
