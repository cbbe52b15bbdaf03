"""Write episodes as ROS 2 bags with ``rosbags``' own writer (``python -m tune_app data demo``).

The inverse of :mod:`.rosbag`: joint states go on ``data.joint_topic`` as ``sensor_msgs/JointState``
in the recorded convention (the configured joint sign undone; joint names in a different order
than ``data.joint_names``, as real drivers publish them), frames on every camera topic as
``sensor_msgs/Image`` (rgb8, bgr8, mono8, 16UC1, 32FC1) or ``CompressedImage`` (PNG/JPEG).
Joint messages arrive 3 ms after their frame, so synchronisation has real offsets to resolve.
Several segments in one bag are separated by a pause of ``gap_s`` seconds (one recording with a
long gap), otherwise every episode is its own bag.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tune_app.config import Config
from tune_app.data.episodes import EpisodeSet
from tune_app.data.rosbag import camera_topics

JOINT_LAG_NS = 3_000_000
T0_NS = 1_700_000_000 * 10**9


def _image_msg(types, img: np.ndarray, encoding: str, header):
    h, w, _ = img.shape
    if encoding == "compressed" or encoding in ("png", "jpeg"):
        fmt = "jpeg" if encoding == "jpeg" else "png"
        buf = io.BytesIO()
        PILImage.fromarray(img).save(buf, format=fmt.upper())
        return types["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=np.frombuffer(buf.getvalue(), np.uint8))
    if encoding == "rgb8":
        data, step = img, w * 3
    elif encoding == "bgr8":
        data, step = img[..., ::-1], w * 3
    elif encoding == "mono8":
        data, step = img.mean(2).astype(np.uint8), w
    elif encoding == "16UC1":
        data, step = (img.mean(2) * 16 + 200).astype("<u2"), w * 2
    elif encoding == "32FC1":
        data, step = (img.mean(2) / 100 + 0.3).astype("<f4"), w * 4
    else:
        raise ValueError(f"unknown encoding {encoding}")
    raw = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    return types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=raw)


def write_bag(path: Path, segments: list[tuple[np.ndarray, np.ndarray]], cfg: Config, *, storage: str = "sqlite3",
              encoding: str = "rgb8", gap_s: float = 0.0, drop_joint_topic: bool = False) -> None:
    """Write ``[(states (T, J), images (T, cams, H, W, 3)), ...]`` as one bag at ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(getattr(Stores, cfg.data.ros_distro))
    types = store.types
    names = list(cfg.data.joint_names)
    published = names[::-1]                                   # drivers publish in their own order
    perm = [names.index(n) for n in published]
    sign = np.asarray(cfg.conventions.joint_sign) if cfg.conventions.apply_joint_sign else 1.0
    period = int(round(1e9 / cfg.data.fps))
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    image_type = "sensor_msgs/msg/CompressedImage" if encoding in ("compressed", "png", "jpeg") else "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        joints = None if drop_joint_topic else writer.add_connection(cfg.data.joint_topic, "sensor_msgs/msg/JointState", typestore=store)
        cams = [writer.add_connection(t, image_type, typestore=store) for t in camera_topics(cfg)]
        t = T0_NS
        for states, images in segments:
            for frame in range(len(states)):
                stamp = types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
                header = types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera")
                for c, conn in enumerate(cams):
                    msg = _image_msg(types, images[frame, c], encoding, header)
                    writer.write(conn, t, store.serialize_cdr(msg, image_type))
                if joints is not None:
                    raw = (np.asarray(states[frame], dtype=np.float64) * sign)[perm]
                    js = types["sensor_msgs/msg/JointState"](header=header, name=published, position=raw,
                                                              velocity=np.zeros(0), effort=np.zeros(0))
                    writer.write(joints, t + JOINT_LAG_NS, store.serialize_cdr(js, "sensor_msgs/msg/JointState"))
                t += period
            t += int(gap_s * 1e9)


def episode_arrays(eps: EpisodeSet, e: int) -> tuple[np.ndarray, np.ndarray]:
    s, t = int(eps.episode_starts[e]), int(eps.episode_ends[e])
    return np.asarray(eps.states[s:t]), np.asarray(eps.images[s:t])


def write_demo_bags(out_dir: Path, cfg: Config, eps: EpisodeSet, *, storage: str = "sqlite3", encoding: str = "rgb8") -> list[Path]:
    """One bag per episode: ``out_dir/episode_000``, ``episode_001``, ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for e in range(eps.num_episodes):
        path = out_dir / f"episode_{e:03d}"
        write_bag(path, [episode_arrays(eps, e)], cfg, storage=storage, encoding=encoding)
        paths.append(path)
    return paths
