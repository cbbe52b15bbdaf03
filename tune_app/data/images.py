"""Turn ROS image messages (and encoded frames) into RGB uint8 arrays of the configured size.

Every camera frame ends up as (H, W, 3) uint8, the only image form the rest of tune_app sees:

* ``rgb8``/``rgba8`` as is (alpha dropped), ``bgr8``/``bgra8`` with channels flipped, ``mono8``
  stacked x3;
* depth (``16UC1``, ``mono16``, ``32FC1``): clipped to the 1st-99th percentile of the frame's
  non-zero pixels, scaled to 0-255 and stacked x3 (the original trainer's rule, so configs trained
  on it see the same pictures); invalid (0, NaN) pixels become 0;
* ``CompressedImage`` (JPEG/PNG): decoded with Pillow.

Anything else is an :class:`UnsupportedImage` naming the encoding; the caller turns it into a
one-line error that names the bag and topic.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

RGB = {"rgb8": (3, False), "rgba8": (4, False), "bgr8": (3, True), "bgra8": (4, True), "mono8": (1, False)}
DEPTH = {"16UC1": np.uint16, "mono16": np.uint16, "32FC1": np.float32}
SUPPORTED = sorted([*RGB, *DEPTH, "CompressedImage (jpeg/png)"])


class UnsupportedImage(ValueError):
    pass


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    d = depth.astype(np.float32)
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros(d.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = np.percentile(d[valid], [1, 99])
        scaled = (np.clip(d, lo, hi) - lo) / max(hi - lo, 1e-6) * 255.0
        out[valid] = scaled[valid].astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2)


def decode_raw(encoding: str, height: int, width: int, step: int, data: np.ndarray, big_endian: bool = False) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` payload to (H, W, 3) uint8."""
    buf = np.asarray(data, dtype=np.uint8)
    if encoding in RGB:
        channels, flip = RGB[encoding]
        rows = buf[: height * step].reshape(height, step)[:, : width * channels]
        img = rows.reshape(height, width, channels)
        if channels == 1:
            return np.repeat(img, 3, axis=2)
        img = img[..., :3]
        return np.ascontiguousarray(img[..., ::-1] if flip else img)
    if encoding in DEPTH:
        dtype = np.dtype(DEPTH[encoding]).newbyteorder(">" if big_endian else "<")
        rows = buf[: height * step].reshape(height, step)[:, : width * dtype.itemsize]
        return depth_to_rgb(np.ascontiguousarray(rows).view(dtype).reshape(height, width))
    raise UnsupportedImage(f"image encoding '{encoding}' is not supported (supported: {', '.join(SUPPORTED)})")


def decode_compressed(data: bytes | np.ndarray) -> np.ndarray:
    """Decode a JPEG/PNG frame (``sensor_msgs/CompressedImage`` data or a stored image file)."""
    try:
        with PILImage.open(io.BytesIO(bytes(np.asarray(data, dtype=np.uint8)) if not isinstance(data, bytes) else data)) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                return depth_to_rgb(np.asarray(im))
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as err:
        raise UnsupportedImage(f"compressed frame cannot be decoded ({err})") from None


def decode_message(msg) -> np.ndarray:
    """Decode a deserialised ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``."""
    if hasattr(msg, "encoding"):
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    return decode_compressed(msg.data)


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (H, W); a no-op when the size already matches."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(PILImage.fromarray(img).resize((w, h), PILImage.BILINEAR))
