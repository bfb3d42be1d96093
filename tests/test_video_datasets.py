"""Tests of the DAVIS / YouTube-VOS readers, layout detection and the video clip sampler
(vostrack.data.video_datasets), on small trees written here.

Frames show each object as a flat square of its own colour, and frame t carries its index in
a corner block (value 6 * t), so a sampled clip tells which frames were read and whether the ids
follow the objects.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vostrack.data.clips import VOID, AugmentConfig
from vostrack.data.video_datasets import (
    DavisDataset,
    VideoClipSource,
    VideoSamplingConfig,
    YouTubeVOSDataset,
    detect_source,
    pick_frames,
)
from vostrack.errors import VostrackError
from vostrack.io.palette import write_label_png

HEIGHT, WIDTH = 64, 96
COLOURS = {1: (240, 30, 30), 2: (30, 230, 40), 3: (40, 60, 240)}
# Identity geometry: the training size is the frame size, no zoom, jitter, flip or colour.
IDENTITY = AugmentConfig(
    size=(HEIGHT, WIDTH),
    zoom=(1.0, 1.0),
    aspect=1.0,
    frame_shift=0.0,
    frame_scale=0.0,
    flip=0.0,
    colour=None,
    min_object_pixels=10,
)


def _scene(t, objects, appear=None):
    """Frame t and its labels: object k is a 14x14 square moving right by 1 px a frame."""
    appear = appear or {}
    frame = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame[:4, :4] = 6 * t
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    for k in range(1, objects + 1):
        if t < appear.get(k, 0):
            continue
        y, x = 8 + 18 * (k - 1), 6 + t + 10 * (k - 1)
        frame[y : y + 14, x : x + 14] = COLOURS[k]
        labels[y : y + 14, x : x + 14] = k
    return frame, labels


def _write_frame(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])


def write_davis(root, sequences, num_frames=12, objects=1, davis2016=True, sets=None, void=False):
    for seq in sequences:
        for t in range(num_frames):
            frame, labels = _scene(t, objects)
            _write_frame(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", frame)
            path = root / "Annotations" / "480p" / seq / f"{t:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if davis2016:
                cv2.imwrite(str(path), np.where(labels > 0, 255, 0).astype(np.uint8))
            else:
                if void:
                    labels[-3:, :] = VOID
                write_label_png(path, labels)
    for (year, name), names in (sets or {}).items():
        listing = root / "ImageSets" / str(year) / f"{name}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{n}\n" for n in names))
    return root


def write_youtube(root, videos, num_frames=21, every=5, appear=None, meta=True, narrow=None):
    split = root / "train"
    meta_videos = {}
    for vid in videos:
        objects = {}
        for t in range(num_frames):
            frame, labels = _scene(t, 2, appear)
            _write_frame(split / "JPEGImages" / vid / f"{t:05d}.jpg", frame)
            if t % every == 0:
                if narrow == t:
                    labels = labels[:, :-1]  # an annotation 1 px narrower than its frame
                path = split / "Annotations" / vid / f"{t:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_label_png(path, labels)
                for k in np.unique(labels[labels > 0]):
                    objects.setdefault(str(int(k)), {"category": "square", "frames": []})
                    objects[str(int(k))]["frames"].append(f"{t:05d}")
        meta_videos[vid] = {"objects": objects}
    if meta:
        (split / "meta.json").write_text(json.dumps({"videos": meta_videos}))
    return root


def _frame_indices(clip):
    return [int(round(clip.frames[t][:4, :4].mean() / 6)) for t in range(clip.num_frames)]


def _assert_ids_follow_objects(clip):
    """Label k shows the same colour on every frame (ids consistent across frames)."""
    for k in range(1, clip.num_objects + 1):
        colours = []
        for t in range(clip.num_frames):
            mask = clip.labels[t] == k
            if mask.any():
                inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
                colours.append(clip.frames[t][inner].mean(0))
        assert colours
        assert np.abs(np.array(colours) - colours[0]).max() < 12
        assert min(np.abs(colours[0] - np.array(c)).max() for c in COLOURS.values()) < 12


# ---- layout detection ---------------------------------------------------------------------------


def test_detect_source_on_each_layout(tmp_path):
    assert detect_source(write_davis(tmp_path / "davis", ["a"], num_frames=3)) == "davis"
    assert detect_source(write_youtube(tmp_path / "ytvos", ["v"], num_frames=6)) == "youtube-vos"
    assert detect_source(tmp_path / "ytvos" / "train") == "youtube-vos"
    (tmp_path / "static" / "images").mkdir(parents=True)
    (tmp_path / "static" / "masks").mkdir()
    assert detect_source(tmp_path / "static") == "images-masks"
    assert detect_source("procedural") == "procedural"


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_detect_source_refuses_unknown_layouts_in_one_line(tmp_path, make):
    path = tmp_path / "data"
    if make == "empty":
        path.mkdir()
        (path / "JPEGImages").mkdir()
    elif make == "file":
        path.write_text("x")
    with pytest.raises(VostrackError) as info:
        detect_source(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---- DAVIS --------------------------------------------------------------------------------------


def test_davis2016_masks_are_one_object(tmp_path):
    root = write_davis(tmp_path, ["a", "b"], num_frames=5)
    dataset = DavisDataset(root, split=None)
    assert dataset.names == ["a", "b"] and dataset.sequences[0].annotated == tuple(range(5))
    labels = dataset.read_labels(dataset.sequences[0], 2)
    assert set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels, _scene(2, 1)[1])


def test_davis2017_palette_ids_and_void(tmp_path):
    root = write_davis(tmp_path, ["a"], num_frames=5, objects=3, davis2016=False, void=True)
    dataset = DavisDataset(root, split=None)
    labels = dataset.read_labels(dataset.sequences[0], 3)
    expected = _scene(3, 3)[1]
    expected[-3:, :] = VOID
    np.testing.assert_array_equal(labels, expected)


def test_davis_image_sets_split_and_exclude(tmp_path):
    root = write_davis(
        tmp_path,
        ["a", "b", "c"],
        num_frames=3,
        sets={(2016, "train"): ["a", "b"], (2016, "val"): ["c"]},
    )
    assert DavisDataset(root).names == ["a", "b"]
    assert DavisDataset(root, split="val").names == ["c"]
    assert DavisDataset(root, split=None).names == ["a", "b", "c"]
    assert DavisDataset(root, exclude=["a"]).names == ["b"]
    assert DavisDataset(root, sequences=["c", "a"]).names == ["c", "a"]
    with pytest.raises(VostrackError, match="no DAVIS sequence"):
        DavisDataset(root, exclude=["a", "b"])


def test_davis_evaluation_tree_is_not_trained_on_by_default(tmp_path):
    root = write_davis(tmp_path, ["c"], num_frames=3, sets={(2016, "val"): ["c"]})
    with pytest.raises(VostrackError) as info:
        DavisDataset(root)
    assert "train.txt" in str(info.value) and "\n" not in str(info.value)


def test_davis_clips_have_the_right_gaps_and_consistent_ids(tmp_path):
    root = write_davis(tmp_path, ["a", "b"], num_frames=30, objects=3, davis2016=False)
    config = VideoSamplingConfig(
        max_gap=3, reference_gap_scale=2.0, max_objects=2, augment=IDENTITY
    )
    source = VideoClipSource(DavisDataset(root, split=None), config)
    seen_gaps = set()
    for seed in range(25):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.frames.shape == (3, HEIGHT, WIDTH, 3) and clip.num_objects == 2
        frames = _frame_indices(clip)
        names = [int(n) for n in clip.name.split(":")[1].split(",")]
        assert frames == names
        gaps = np.abs(np.diff(frames))
        assert 1 <= gaps[0] <= 6 and 1 <= gaps[1] <= 3
        assert np.all(np.diff(frames) > 0) or np.all(np.diff(frames) < 0)
        seen_gaps.update(gaps.tolist())
        _assert_ids_follow_objects(clip)
        # Identity geometry: labels are the tree's, with the two chosen objects renumbered.
        truth = np.stack([_scene(t, 3)[1] for t in frames])
        kept = [int(truth[0][clip.labels[0] == k][0]) for k in (1, 2)]
        assert kept[0] < kept[1]
        for new, old in enumerate(kept, start=1):
            np.testing.assert_array_equal(clip.labels == new, truth == old)
    assert {1, 2, 3} <= seen_gaps and max(seen_gaps) > 3


def test_gap_grows_with_the_schedule(tmp_path):
    from vostrack.data.clips import GapSchedule

    root = write_davis(tmp_path, ["a"], num_frames=40)
    config = VideoSamplingConfig(
        max_gap=GapSchedule(1, 8, 100), reference_gap_scale=1.0, augment=IDENTITY
    )
    source = VideoClipSource(DavisDataset(root, split=None), config)
    early = [
        np.abs(np.diff(_frame_indices(source.sample(np.random.default_rng(s), step=0))))
        for s in range(10)
    ]
    late = [
        np.abs(np.diff(_frame_indices(source.sample(np.random.default_rng(s), step=100))))
        for s in range(10)
    ]
    assert max(g.max() for g in early) == 1
    assert max(g.max() for g in late) > 3 and max(g.max() for g in late) <= 8


def test_pick_frames():
    rng = np.random.default_rng(0)
    for _ in range(200):
        picked = pick_frames(list(range(0, 20)), 4, 3, rng, first_gap=6)
        d = np.diff(picked)
        assert len(picked) == 4 and np.all(d >= 1) and d[0] <= 6 and np.all(d[1:] <= 3)
    # Sparse annotations (every 5th frame) with a smaller gap: the next annotated frame.
    sparse = list(range(0, 50, 5))
    for _ in range(50):
        assert np.all(np.diff(pick_frames(sparse, 3, 2, rng)) == 5)
    # Backwards.
    picked = pick_frames(sparse[::-1], 3, 10, rng)
    assert np.all(np.diff(picked) < 0)
    assert pick_frames([1, 2], 3, 5, rng) is None


def test_sampling_reads_only_the_clip_frames(tmp_path, monkeypatch):
    import vostrack.data.video_datasets as vd

    root = write_davis(tmp_path, ["a"], num_frames=30)
    source = VideoClipSource(DavisDataset(root, split=None), VideoSamplingConfig(augment=IDENTITY))
    reads = []
    original = vd.read_image_rgb
    monkeypatch.setattr(vd, "read_image_rgb", lambda p: reads.append(p) or original(p))
    source.sample(np.random.default_rng(0))
    assert len(reads) == 3


# ---- YouTube-VOS ------------------------------------------------------------------------------


@pytest.mark.parametrize("meta", [True, False])
def test_youtube_vos_sparse_annotations_and_objects_appearing_late(tmp_path, meta):
    # Object 2 appears at frame 10; masks every 5th frame; one annotation is 1 px narrow.
    root = write_youtube(
        tmp_path, ["v1", "v2"], num_frames=26, appear={2: 10}, meta=meta, narrow=15
    )
    dataset = YouTubeVOSDataset(root)
    assert dataset.names == ["v1", "v2"]
    seq = dataset.sequences[0]
    assert seq.num_frames == 26 and seq.annotated == (0, 5, 10, 15, 20, 25)
    assert (seq.objects is not None) == meta
    assert dataset.read_labels(seq, 15, (HEIGHT, WIDTH)).shape == (HEIGHT, WIDTH)
    config = VideoSamplingConfig(max_gap=2, reverse=0.0, augment=IDENTITY)
    source = VideoClipSource(dataset, config)
    counts = set()
    for seed in range(12):
        clip = source.sample(np.random.default_rng(seed))
        frames = _frame_indices(clip)
        assert all(f % 5 == 0 for f in frames) and np.all(np.diff(frames) == 5)
        # Object 2 is a target only when it is on the reference frame.
        assert clip.num_objects == (2 if frames[0] >= 10 else 1)
        counts.add(clip.num_objects)
        _assert_ids_follow_objects(clip)
    assert counts == {1, 2}
    assert YouTubeVOSDataset(root, exclude=["v1"]).names == ["v2"]


def test_video_source_with_augmentation_keeps_boxes_consistent(tmp_path):
    from vostrack.network.parts import mask_box

    root = write_youtube(tmp_path, ["v1"], num_frames=11, every=1)
    source = VideoClipSource(
        YouTubeVOSDataset(root),
        VideoSamplingConfig(augment=AugmentConfig(size=(48, 48), min_object_pixels=10)),
    )
    for seed in range(5):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.size == (48, 48) and clip.num_objects >= 1
        arrays = clip.to_arrays(4, 6)
        for t in range(3):
            for k in range(clip.num_objects):
                box = mask_box(clip.labels[t] == k + 1)
                if box is not None:
                    np.testing.assert_array_equal(arrays["object_boxes"][t, k], box)


def test_single_video_folder_and_too_few_annotations(tmp_path):
    # One video's folder (as the Cutie / AOT examples): frames + masks side by side.
    root = tmp_path / "video"
    for t in range(6):
        frame, labels = _scene(t, 1)
        _write_frame(root / "JPEGImages" / f"{t:05d}.jpg", frame)
        if t == 0:
            (root / "Annotations").mkdir()
            write_label_png(root / "Annotations" / f"{t:05d}.png", labels)
    assert detect_source(root) == "youtube-vos"
    dataset = YouTubeVOSDataset(root)
    assert dataset.names == ["video"] and dataset.sequences[0].annotated == (0,)
    # First-frame-only annotations cannot make training clips: said up front, in one line.
    with pytest.raises(VostrackError) as info:
        VideoClipSource(dataset, VideoSamplingConfig(augment=IDENTITY))
    assert "3 annotated frames" in str(info.value) and "\n" not in str(info.value)


def test_long_clips_with_gaps_above_ten(tmp_path):
    root = write_davis(tmp_path, ["a"], num_frames=42)
    config = VideoSamplingConfig(
        num_frames=6, max_gap=12, reference_gap_scale=1.5, reverse=0.5, augment=IDENTITY
    )
    source = VideoClipSource(DavisDataset(root, split=None), config)
    firsts, others = [], []
    for seed in range(30):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.frames.shape == (6, HEIGHT, WIDTH, 3)
        frames = _frame_indices(clip)
        assert frames == [int(n) for n in clip.name.split(":")[1].split(",")]
        gaps = np.abs(np.diff(frames))
        assert np.all(gaps >= 1) and gaps[0] <= 18 and np.all(gaps[1:] <= 12)
        firsts.append(gaps[0])
        others.extend(gaps[1:])
        _assert_ids_follow_objects(clip)
    assert max(others) > 10 and max(firsts) > 12
