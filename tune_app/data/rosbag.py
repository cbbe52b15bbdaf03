"""ROS 2 bags (rosbag2, sqlite3 or mcap storage) -> synchronised episodes, read with ``rosbags``.

Two passes, so memory holds one frame at a time however long the recordings are:

1. **Scan**: per bag, the joint messages (small; reordered to ``data.joint_names``) and the
   receive timestamps of every camera message (not decoded). Each bag is put on a ``data.fps``
   grid: a grid point takes the nearest joint sample and the nearest frame of every camera, and
   is dropped when any of them is more than ``data.max_offset_ms`` away (no interpolation, as in
   the original trainer). Runs of kept points further apart than ``data.episode_gap_s`` become
   separate episodes, so a bag is one episode unless its recording has a long gap.
2. **Decode**: only the frames some grid point picked, straight into the cache's memory map.

Conventions: joints are multiplied by ``conventions.joint_sign`` and wrapped to (-pi, pi] when
``conventions.wrap_angles``; actions are the next state's delta within the episode (the last
frame's is 0), taken as the wrapped difference so a wrap at +-pi is a small step, not a 2*pi jump
(the original wrapped before ``np.diff``). Timestamps are the bag's receive times, as before.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tune_app.config import Config
from tune_app.data.cache import CacheWriter, Layout, cache_key, progress
from tune_app.data.images import UnsupportedImage, decode_message, resize
from tune_app.errors import UserError

JOINT_TYPES = {"sensor_msgs/msg/JointState"}
IMAGE_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"}


def camera_topics(cfg: Config) -> list[str]:
    return list(cfg.data.camera_topics) if cfg.data.camera_topics else [cfg.data.camera_topic]


def discover_bags(bag_dir: Path) -> list[Path]:
    """Every folder holding a rosbag2 ``metadata.yaml`` under ``bag_dir`` (itself included), sorted."""
    return sorted(p.parent for p in bag_dir.rglob("metadata.yaml"))


def bag_files(bags: list[Path]) -> list[Path]:
    return [f for bag in bags for f in sorted(bag.iterdir()) if f.is_file()]


def cache_fields(cfg: Config) -> dict:
    """The config fields that change what a bag decodes to (the cache key's config part)."""
    d, c = cfg.data, cfg.conventions
    return {"ros_distro": d.ros_distro, "joint_topic": d.joint_topic, "cameras": camera_topics(cfg),
            "joint_names": d.joint_names, "fps": d.fps, "max_offset_ms": d.max_offset_ms,
            "episode_gap_s": d.episode_gap_s, "apply_joint_sign": c.apply_joint_sign, "joint_sign": c.joint_sign,
            "wrap_angles": c.wrap_angles, "image_resize": c.image_resize}


def _reader(bag: Path, typestore):
    from rosbags.highlevel import AnyReader

    return AnyReader([bag], default_typestore=typestore)


def _unreadable(bag: Path, err: Exception) -> UserError:
    return UserError(f"bag {bag}: cannot be read ({type(err).__name__}: {str(err).strip() or 'no detail'}); "
                     "is the recording complete and not corrupt?")


def _open(bag: Path, typestore):
    try:
        reader = _reader(bag, typestore)
        reader.open()
        return reader
    except Exception as err:  # noqa: BLE001 - rosbags raises several types for unreadable recordings
        raise _unreadable(bag, err) from None


@dataclass
class BagScan:
    bag: Path
    joint_ts: np.ndarray                     # (J,) int64 ns
    positions: np.ndarray                    # (J, joints) float64, configured joint order
    camera_ts: list[np.ndarray]              # per camera, (M_c,) int64 ns, in message order
    episodes: list[tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=list)  # (joint idx, [frame idx per cam])


def _connection(reader, bag: Path, topic: str, key: str, types: set[str]):
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        have = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)) or "no topics"
        raise UserError(f"bag {bag}: topic '{topic}' ({key}) is not in the bag; it has: {have}")
    if conns[0].msgtype not in types:
        raise UserError(f"bag {bag}: topic '{topic}' ({key}) carries {conns[0].msgtype}, expected {' or '.join(sorted(types))}")
    return conns


def _reorder(names: list[str], wanted: list[str], bag: Path, topic: str) -> np.ndarray:
    missing = [n for n in wanted if n not in names]
    if missing:
        raise UserError(f"bag {bag}: {topic} has no joint(s) {missing} (its joints: {names}); "
                        "set data.joint_names to the recorded names")
    return np.array([names.index(n) for n in wanted])


def _scan(bag: Path, cfg: Config, typestore) -> BagScan:
    reader = _open(bag, typestore)
    try:
        joint_conns = _connection(reader, bag, cfg.data.joint_topic, "data.joint_topic", JOINT_TYPES)
        cam_keys = "data.camera_topics" if cfg.data.camera_topics else "data.camera_topic"
        cam_conns = [_connection(reader, bag, t, cam_keys, IMAGE_TYPES) for t in camera_topics(cfg)]
        wanted = list(cfg.data.joint_names)
        ts, rows, order, order_for = [], [], None, None
        for conn, t, raw in reader.messages(connections=joint_conns):
            msg = reader.deserialize(raw, conn.msgtype)
            pos = np.asarray(msg.position, dtype=np.float64)
            names = list(msg.name)
            if not names:                              # unnamed: must already be in the configured order
                if len(pos) != len(wanted):
                    continue
                rows.append(pos)
            else:
                if names != order_for:
                    order, order_for = _reorder(names, wanted, bag, cfg.data.joint_topic), names
                if len(pos) != len(names):
                    continue
                rows.append(pos[order])
            ts.append(t)
        cam_ts = [np.fromiter((t for _, t, _ in reader.messages(connections=conns)), dtype=np.int64) for conns in cam_conns]
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _unreadable(bag, err) from None
    finally:
        reader.close()
    positions = np.asarray(rows, dtype=np.float64).reshape(-1, len(wanted))
    return BagScan(bag, np.asarray(ts, dtype=np.int64), positions, cam_ts)


def nearest(stamps: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp (sorted) for every grid time, and its absolute offset (ns)."""
    i = np.clip(np.searchsorted(stamps, grid), 1, len(stamps) - 1) if len(stamps) > 1 else np.zeros(len(grid), dtype=np.int64)
    if len(stamps) > 1:
        i = np.where(np.abs(stamps[i - 1] - grid) <= np.abs(stamps[i] - grid), i - 1, i)
    return i, np.abs(stamps[i] - grid)


def synchronise(scan: BagScan, fps: float, max_offset_ms: float, gap_s: float) -> None:
    """Fill ``scan.episodes``: per episode, joint indices and per-camera frame indices of its grid points.

    A pause of the whole recording longer than ``gap_s`` separates segments, each on its own grid
    (so no grid point straddles the pause); inside a segment, points whose nearest samples are
    too far are dropped and runs of kept points further apart than ``gap_s`` become episodes
    (a camera or joint stream that stalls while the others go on)."""
    streams = [scan.joint_ts, *scan.camera_ts]
    if any(len(s) == 0 for s in streams):
        return
    merged = np.sort(np.concatenate(streams))
    pauses = np.flatnonzero(np.diff(merged) > gap_s * 1e9)
    bounds = zip(np.r_[merged[0], merged[pauses + 1]], np.r_[merged[pauses], merged[-1]], strict=True)
    for lo, hi in bounds:
        inside = [np.flatnonzero((s >= lo) & (s <= hi)) for s in streams]      # message indices in this segment
        if any(len(i) == 0 for i in inside):
            continue
        _grid_segment(scan, [s[i] for s, i in zip(streams, inside, strict=True)], inside, fps, max_offset_ms, gap_s)


def _grid_segment(scan: BagScan, stamps: list[np.ndarray], index: list[np.ndarray], fps: float, max_offset_ms: float,
                  gap_s: float) -> None:
    sorts = [np.argsort(s, kind="stable") for s in stamps]
    sorted_streams = [s[o] for s, o in zip(stamps, sorts, strict=True)]
    start, stop = max(int(s[0]) for s in sorted_streams), min(int(s[-1]) for s in sorted_streams)
    if stop < start:
        return
    # The grid starts at the latest first message; its end may overshoot the earliest last message
    # by up to half a period (within the allowed offset), so a final frame is not lost to a few ms of skew.
    grid = np.arange(start, stop + min(max_offset_ms * 1e6, 0.5e9 / fps) + 1, 1e9 / fps).astype(np.int64)
    picks, ok = [], np.ones(len(grid), dtype=bool)
    for s, o, idx in zip(sorted_streams, sorts, index, strict=True):
        nearest_i, off = nearest(s, grid)
        picks.append(idx[o[nearest_i]])              # back to the bag's message order
        ok &= off <= max_offset_ms * 1e6
    kept = np.flatnonzero(ok)
    cuts = np.flatnonzero(np.diff(grid[kept]) > gap_s * 1e9) + 1
    for run in np.split(kept, cuts):
        if len(run) >= 2:
            scan.episodes.append((picks[0][run], [p[run] for p in picks[1:]]))


def wrap(a: np.ndarray) -> np.ndarray:
    return np.arctan2(np.sin(a), np.cos(a))


def states_and_actions(positions: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    c = cfg.conventions
    q = positions * np.asarray(c.joint_sign, dtype=np.float64) if c.apply_joint_sign else positions.copy()
    if c.wrap_angles:
        q = wrap(q)
    delta = np.diff(q, axis=0)
    if c.wrap_angles:
        delta = wrap(delta)
    actions = np.concatenate([delta, np.zeros((1, q.shape[1]))])
    return q.astype(np.float32), actions.astype(np.float32)


def _decode_frames(scan: BagScan, cfg: Config, typestore, writer: CacheWriter, first_frame: int, bar) -> None:
    """Decode the picked frames of one bag into ``writer.images`` (slots from ``first_frame`` on)."""
    hw = tuple(cfg.conventions.image_resize)
    reader = _open(scan.bag, typestore)
    try:
        for cam, topic in enumerate(camera_topics(cfg)):
            slots: dict[int, list[int]] = {}
            frame = first_frame
            for _, per_cam in scan.episodes:
                for k in per_cam[cam]:
                    slots.setdefault(int(k), []).append(frame)
                    frame += 1
            conns = [c for c in reader.connections if c.topic == topic]
            for k, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
                if k not in slots:
                    continue
                try:
                    img = resize(decode_message(reader.deserialize(raw, conn.msgtype)), hw)
                except UnsupportedImage as err:
                    raise UserError(f"bag {scan.bag}: topic '{topic}': {err}") from None
                for slot in slots[k]:
                    writer.images[slot, cam] = img
                bar.update(len(slots[k]))
    finally:
        reader.close()


class BagSource:
    kind = "rosbag2"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = Path(cfg.data.bag_dir)
        self.bags = discover_bags(self.root)
        if not self.bags:
            raise UserError(f"data.bag_dir: no ROS 2 bags (folders with a metadata.yaml) under {self.root}; "
                            "point it at the folder holding your recordings")
        if cfg.conventions.apply_joint_sign and len(cfg.conventions.joint_sign) != len(cfg.data.joint_names):
            raise UserError(f"conventions.joint_sign has {len(cfg.conventions.joint_sign)} entries but data.joint_names "
                            f"{len(cfg.data.joint_names)}; give one sign per joint")

    def key(self) -> str:
        return cache_key(self.kind, self.root, bag_files(self.bags), cache_fields(self.cfg))

    def describe(self) -> str:
        return f"ROS 2 bags in {self.root} ({len(self.bags)} recording(s))"

    def build(self, folder: Path) -> None:
        from rosbags.typesys import Stores, get_typestore

        cfg = self.cfg
        try:
            typestore = get_typestore(getattr(Stores, cfg.data.ros_distro))
        except AttributeError:
            raise UserError(f"data.ros_distro: unknown '{cfg.data.ros_distro}' (e.g. ROS2_HUMBLE, ROS2_JAZZY)") from None
        scans = []
        for bag in self.bags:
            scan = _scan(bag, cfg, typestore)
            synchronise(scan, cfg.data.fps, cfg.data.max_offset_ms, cfg.data.episode_gap_s)
            if not scan.episodes:
                print(f"warning: bag {bag}: no synchronised frames (joint/camera messages never within "
                      f"data.max_offset_ms={cfg.data.max_offset_ms:g} of the {cfg.data.fps:g} fps grid); skipped", file=sys.stderr)
            scans.append(scan)
        lengths = [len(j) for s in scans for j, _ in s.episodes]
        if not lengths:
            raise UserError(f"data.bag_dir: no synchronised frames in any of the {len(scans)} bag(s) under {self.root}: joint "
                            f"and camera messages are never within data.max_offset_ms={cfg.data.max_offset_ms:g} of each other "
                            "on the data.fps grid; check the topics and timestamps or raise data.max_offset_ms")
        h, w = cfg.conventions.image_resize
        writer = CacheWriter(folder, Layout(lengths, len(cfg.data.joint_names), len(cfg.data.joint_names),
                                            len(camera_topics(cfg)), h, w))
        frame = 0
        with progress(sum(lengths) * len(camera_topics(cfg)), f"decoding {len(scans)} bag(s)") as bar:
            for scan in scans:
                start = frame
                for joint_idx, _ in scan.episodes:
                    states, actions = states_and_actions(scan.positions[joint_idx], cfg)
                    writer.states[frame:frame + len(states)] = states
                    writer.actions[frame:frame + len(states)] = actions
                    frame += len(states)
                _decode_frames(scan, cfg, typestore, writer, start, bar)
        episodes_per_bag = {str(s.bag.relative_to(self.root)): len(s.episodes) for s in scans}
        writer.finish(self.describe(), {"episodes_per_bag": episodes_per_bag})
