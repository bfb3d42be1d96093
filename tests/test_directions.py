"""Propagation both ways from any annotated frame (vostrack.inference.plan), frame ranges and
corrections: the rule of which annotation gives an object on a frame, masks on every frame from
a middle annotation, a correction that redoes only what it can change, and a backward pass that
resumes and stays within a forward run's memory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import squares_clip, write_frame_folder, write_video
from tests.doubles import ColourPropagator
from vostrack.errors import InterruptedRun, VostrackError
from vostrack.inference.pipeline import OutputOptions, SegmentRun, frames_to_redo
from vostrack.inference.plan import BACKWARD, FORWARD, Plan
from vostrack.io.frames import open_frames
from vostrack.io.masks import load_annotations
from vostrack.io.palette import read_label_png, write_label_png


class ShiftPropagator:
    """Each step moves every object one pixel right, whatever the frame shows: where an
    object lands on a frame tells from which annotation, and how many steps away, it came."""

    name = "shift-double"

    def encode_reference(self, frame, labels, previous=None):
        return "reference"  # nothing to remember: the state is the whole memory

    def initial_state(self, frame, labels, reference, encoded=False):
        return labels.copy()

    def step(self, frame, reference, state):
        moved = np.zeros_like(state)
        moved[:, 1:] = state[:, :-1]
        return moved, moved


def box(k, x, height=32, width=96, y=None):
    labels = np.zeros((height, width), np.uint8)
    y = 4 + 12 * (k - 1) if y is None else y
    labels[y : y + 8, x : x + 8] = k
    return labels


def left(labels, k):
    """The leftmost column of object ``k`` (None when absent)."""
    cols = np.nonzero((labels == k).any(axis=0))[0]
    return int(cols[0]) if len(cols) else None


def segment(tmp_path, propagator, frames_dir, masks, out="out", corrections=(), **options):
    source = open_frames(frames_dir)
    paths, frames = zip(*masks) if masks else ((), ())
    annotations = load_annotations(list(paths), list(frames), source)
    fixes = []
    if corrections:
        paths, frames = zip(*corrections)
        fixes = load_annotations(list(paths), list(frames), source)
    run = SegmentRun(
        source,
        annotations,
        propagator,
        OutputOptions(tmp_path / out, progress=False, **options),
        corrections=fixes,
    )
    summary = run.run()
    names = summary["frame_names"]
    return [read_label_png(tmp_path / out / f"{n}.png") for n in names], summary


@pytest.fixture
def blank(tmp_path):
    """20 dark frames (the shift double ignores them)."""
    frames = np.full((20, 32, 96, 3), 20, np.uint8)
    write_frame_folder(tmp_path / "frames", frames, ext=".png")
    return tmp_path / "frames"


def mask(tmp_path, name, labels):
    write_label_png(tmp_path / name, labels)
    return tmp_path / name


# ------------------------------------------------------------------------------------ the rule
def test_each_object_comes_from_its_nearest_annotation_in_the_direction_propagated(tmp_path, blank):
    # Object 1 annotated on frames 4 (at x=10) and 12 (at x=50); object 2 only on frame 8.
    masks = [
        (mask(tmp_path, "a.png", box(1, 10)), 4),
        (mask(tmp_path, "b.png", np.maximum(box(1, 50), box(2, 30))), 12),
        (mask(tmp_path, "c.png", box(2, 30)), 8),
    ]
    both, summary = segment(tmp_path, ShiftPropagator(), blank, masks)
    assert summary["propagation"]["direction"] == "both"
    for t in range(20):
        # object 1: backward from its first annotation before it, forward after each one
        expected = 10 + (4 - t) if t < 4 else (10 + t - 4 if t < 12 else 50 + t - 12)
        assert left(both[t], 1) == expected, t
        # object 2: frames 0..7 backward from frame 8; then forward (frame 12's mask holds it too)
        expected = 30 + (8 - t) if t < 8 else (30 + t - 8 if t < 12 else 30 + t - 12)
        assert left(both[t], 2) == expected, t

    forward, _ = segment(tmp_path, ShiftPropagator(), blank, masks, "fwd", direction="forward")
    assert not forward[3].any() and left(forward[5], 2) is None  # nothing before a first mask
    assert all(np.array_equal(forward[t], both[t]) for t in range(12, 20))

    backward, _ = segment(tmp_path, ShiftPropagator(), blank, masks, "bwd", direction="backward")
    assert not backward[13].any()  # nothing after the last mask
    # object 1 on frame 6: backward from frame 12 (the video reversed: the nearest after it)
    assert left(backward[6], 1) == 50 + (12 - 6) and left(backward[0], 1) == 10 + 4


def test_where_two_passes_claim_a_pixel_the_nearer_annotation_keeps_it():
    plan = Plan.make(10, {2: [1], 7: [2]}, "both")
    assert plan.source(5, 1) == (FORWARD, 3) and plan.source(5, 2) == (BACKWARD, 2)
    assert [p.direction for p in plan.passes] == [BACKWARD, FORWARD]
    assert list(plan.passes[0].frames) == [7, 6, 5, 4, 3, 2, 1, 0]
    forward, backward = np.zeros((1, 4), np.uint8), np.zeros((1, 4), np.uint8)
    forward[0, :3], backward[0, 1:] = 1, 2
    assert plan.combine(5, forward, backward).tolist() == [[1, 2, 2, 2]]  # 2 is nearer
    assert plan.combine(3, forward, backward).tolist() == [[1, 1, 1, 2]]  # 1 is nearer
    assert Plan.make(10, {0: [1, 2]}, "both").passes[0].direction == FORWARD  # nothing before


def test_frame_range_and_bad_directions_are_refused_in_one_line():
    with pytest.raises(VostrackError, match="outside the frames segmented"):
        Plan.make(10, {2: [1]}, "both", first=3, last=8)
    with pytest.raises(VostrackError, match="not within the video"):
        Plan.make(10, {2: [1]}, "both", first=0, last=10)
    with pytest.raises(VostrackError, match="direction must be one of"):
        Plan.make(10, {2: [1]}, "sideways")


def test_a_frame_range_writes_only_its_frames(tmp_path, blank):
    masks = [(mask(tmp_path, "a.png", box(1, 10)), 8)]
    out, summary = segment(tmp_path, ShiftPropagator(), blank, masks, start_frame=5, end_frame=11)
    assert summary["frame_names"] == [f"{i:05d}" for i in range(5, 12)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        f"{i:05d}.png" for i in range(5, 12)
    ]
    assert [left(m, 1) for m in out] == [13, 12, 11, 10, 11, 12, 13]
    assert summary["areas"]["1"] == [64] * 7  # one entry per frame of the range


# ------------------------------------------------------------------------------- corrections
def test_frames_to_redo_follow_the_direction():
    before = {0: [1], 12: [1]}
    after = {0: [1], 6: [1], 12: [1]}
    forward = frames_to_redo(Plan.make(20, before, "forward"), Plan.make(20, after, "forward"))
    assert forward == list(range(6, 20))
    both = frames_to_redo(Plan.make(20, before, "both"), Plan.make(20, after, "both"))
    assert both == list(range(6, 20))  # object 1's first annotation is unchanged
    # a new object first annotated on frame 6: the frames before it take it backward
    new = frames_to_redo(
        Plan.make(20, before, "both"), Plan.make(20, {0: [1], 6: [1, 2], 12: [1]}, "both")
    )
    assert new == list(range(0, 20))
    backward = frames_to_redo(Plan.make(20, before, "backward"), Plan.make(20, after, "backward"))
    assert backward == list(range(0, 7))


def test_a_correction_redoes_only_the_frames_it_can_change(tmp_path, squares):
    video, frames, labels, first = squares
    out = tmp_path / "out"
    segment(tmp_path, ColourPropagator(), video, [(first, 0)])
    names = [f"{i:05d}" for i in range(12)]
    before = {n: os.stat(out / f"{n}.png") for n in names}
    contents = {n: (out / f"{n}.png").read_bytes() for n in names}
    fixed = labels[6].copy()
    fixed[fixed == 2] = 0  # the user removes object 2 from frame 6 on
    fix = mask(tmp_path, "fix.png", fixed)
    masks, summary = segment(
        tmp_path, ColourPropagator(), video, [(first, 0)], corrections=[(fix, 6)]
    )
    for n in names[:6]:  # not rewritten: same inode and time, same bytes
        after = os.stat(out / f"{n}.png")
        assert (after.st_ino, after.st_mtime_ns) == (before[n].st_ino, before[n].st_mtime_ns)
        assert (out / f"{n}.png").read_bytes() == contents[n]
    assert np.array_equal(masks[6], fixed)
    assert all((masks[t] == 1).any() and not (masks[t] == 2).any() for t in range(6, 12))
    assert [c["frame"] for c in summary["corrections"]] == [6]
    assert summary["corrections"][0]["frames_redone"] == [[6, 11]]
    assert np.array_equal(read_label_png(out / summary["corrections"][0]["stored"]), fixed)
    # a second correction (frame 9 as it now is, less object 3) keeps the first in memory
    again = masks[9].copy()
    again[again == 3] = 0
    fix2 = mask(tmp_path, "fix2.png", again)
    masks, summary = segment(
        tmp_path, ColourPropagator(), video, [(first, 0)], corrections=[(fix2, 9)]
    )
    assert [c["frame"] for c in summary["corrections"]] == [6, 9]
    assert not (masks[11] == 2).any() and not (masks[11] == 3).any() and (masks[11] == 1).any()


def test_a_correction_needs_a_complete_run_of_the_same_job(tmp_path, squares):
    video, frames, labels, first = squares
    fix = mask(tmp_path, "fix.png", labels[6])
    with pytest.raises(VostrackError, match="no run to correct"):
        segment(tmp_path, ColourPropagator(), video, [(first, 0)], corrections=[(fix, 6)])
    segment(tmp_path, ColourPropagator(), video, [(first, 0)], direction="forward")
    with pytest.raises(VostrackError, match="another direction"):
        segment(tmp_path, ColourPropagator(), video, [(first, 0)], corrections=[(fix, 6)])


# ----------------------------------------------------------------------- resume and memory
def test_an_interrupted_backward_pass_resumes_to_the_uninterrupted_result(tmp_path, squares):
    video, frames, labels, _ = squares
    last = mask(tmp_path, "last.png", labels[11])
    reference, _ = segment(tmp_path, ColourPropagator(), video, [(last, 11)], "ref")
    with pytest.raises(InterruptedRun):
        segment(tmp_path, ColourPropagator(interrupt_at=5), video, [(last, 11)])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert len(list((tmp_path / "out" / ".vostrack-backward").glob("*.png"))) == 5  # frames 11..7
    resumed, summary = segment(tmp_path, ColourPropagator(), video, [(last, 11)], resume=True)
    assert summary["status"] == "complete"
    assert all(np.array_equal(a, b) for a, b in zip(resumed, reference))
    assert all(
        (r == k).sum() > 0 for r in resumed for k in (1, 2, 3)
    )  # every frame has every object
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_a_video_plays_backwards_one_frame_at_a_time(tmp_path):
    frames, _ = squares_clip(num_frames=9)
    video = write_video(tmp_path / "v.mp4", frames)
    source = open_frames(video)
    ahead = list(source)
    back = list(source.in_order(range(7, 1, -1), spill_dir=tmp_path))
    assert len(back) == 6 and all(
        np.array_equal(b, ahead[t]) for b, t in zip(back, range(7, 1, -1))
    )
    assert list(tmp_path.glob(".*")) == []  # the spill file is gone
    partial = source.in_order(range(8, -1, -1), spill_dir=tmp_path)
    next(partial)
    partial.close()
    assert list(tmp_path.glob(".*")) == []
    middle = list(source.in_order(range(3, 6)))
    assert all(np.array_equal(m, ahead[t]) for m, t in zip(middle, range(3, 6)))


# ------------------------------------------------------------------------- the real network
def test_with_the_real_network_backward_frames_are_about_as_good_as_forward_ones(
    tmp_path, tiny_model
):
    from vostrack import api
    from vostrack.data.procedural import SceneConfig, make_clip

    # textured objects a few matching cells wide: what the tiny network can follow
    config = SceneConfig(
        height=96, width=160, num_frames=17, num_objects=2, seed=3, object_size=(0.25, 0.3)
    )
    frames, labels = make_clip(config)
    video = write_video(tmp_path / "v.mp4", frames)
    middle = mask(tmp_path, "middle.png", labels[8])
    model = api.load_model(str(tiny_model))
    masks = dict(model.masks(video, {8: middle}))
    assert sorted(masks) == list(range(17))

    def mean_iou(ts):
        scores = []
        for t in ts:
            for k in (1, 2):
                a, b = masks[t] == k, labels[t] == k
                scores.append((a & b).sum() / (a | b).sum())
        return float(np.mean(scores))

    forward, backward = mean_iou(range(9, 17)), mean_iou(range(0, 8))
    assert forward > 0.5, forward  # the threshold is set by the forward direction
    assert backward > forward - 0.1, (backward, forward)
    ahead = dict(model.masks(video, {8: middle}, direction="forward"))
    assert not any(ahead[t].any() for t in range(8))
    assert all(np.array_equal(ahead[t], masks[t]) for t in range(9, 17))


def test_sigint_in_the_backward_pass_then_resume_completes_it(tmp_path, monkeypatch):
    import signal

    from click.testing import CliRunner

    from vostrack.cli import cli

    frames, labels = squares_clip(num_frames=12)
    video = write_video(tmp_path / "v.mp4", frames)
    last = mask(tmp_path, "last.png", labels[11])
    args = ["segment", str(video), "--mask", str(last), "--mask-frame", "11", "-q"]

    def use(propagator):
        monkeypatch.setattr(
            "vostrack.registry.load_propagator", lambda name, *_, **__: (propagator, {"name": name})
        )

    use(ColourPropagator())
    assert CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "full")]).exit_code == 0
    stopper = ColourPropagator()
    real_step = stopper.step

    def step(frame, reference, state):
        if stopper.steps == 4:  # the backward pass, frame 7 (frames 11..8 before it)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(frame, reference, state)

    stopper.step = step
    use(stopper)
    out = tmp_path / "out"
    stopped = CliRunner().invoke(cli, [*args, "-o", str(out)])
    assert stopped.exit_code == 130 and "--resume" in stopped.stderr, stopped.output
    assert not list(out.glob("*.png"))  # the backward pass writes no frame of its own
    # 11..6: the signal lets the frame in progress (6) finish
    assert len(list((out / ".vostrack-backward").glob("*.png"))) == 6
    use(ColourPropagator())
    resumed = CliRunner().invoke(cli, [*args, "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    for t in range(12):
        name = f"{t:05d}.png"
        assert np.array_equal(read_label_png(out / name), read_label_png(tmp_path / "full" / name))
    assert not (out / ".vostrack-backward").exists()


@pytest.mark.slow
def test_a_long_video_annotated_near_its_end_keeps_a_forward_runs_memory(tmp_path, tiny_model):
    """Frames go backwards through a file, not memory: peak RSS of the whole segment command
    stays within 10 % of a forward run of the same video (480 frames of 640x360, 330 MB of
    decoded frames, would show many times over)."""
    import subprocess
    import sys

    count = 480
    frames = np.full((count, 360, 640, 3), 20, np.uint8)
    labels = np.zeros((count, 360, 640), np.uint8)
    for t in range(count):  # two squares swinging side to side: on screen throughout
        for k, colour in ((1, (230, 40, 40)), (2, (40, 200, 60))):
            x = int(300 + 200 * np.sin(t / 25 + k))
            y = 60 + 140 * (k - 1)
            frames[t, y : y + 80, x : x + 80] = colour
            labels[t, y : y + 80, x : x + 80] = k
    video = write_video(tmp_path / "long.mp4", frames, fps=25.0, crf=28)
    del frames
    first = mask(tmp_path, "first.png", labels[0])
    near_end = mask(tmp_path, "end.png", labels[count - 5])

    def peak_rss(*args) -> int:
        script = (
            "import resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "assert done.returncode == 0, done.stderr\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        command = [sys.executable, "-m", "vostrack", "segment", str(video), "--model"]
        command += [str(tiny_model), "-q", *map(str, args)]
        done = subprocess.run(
            [sys.executable, "-c", script, *command], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    forward = peak_rss("--mask", first, "--mask-frame", 0, "-o", tmp_path / "fwd")
    backward = peak_rss("--mask", near_end, "--mask-frame", count - 5, "-o", tmp_path / "bwd")
    assert backward <= 1.10 * forward, (backward, forward)


def test_a_mask_not_named_after_a_frame_goes_to_the_first_frame_of_the_range(tmp_path, squares):
    from vostrack import api

    video, frames, labels, _ = squares
    job = api.prepare(video, [mask(tmp_path, "a.png", labels[5])], tmp_path / "out", start_frame=5)
    assert [a.frame for a in job.annotations] == [5]
    named = mask(tmp_path, "00007.png", labels[7])
    job = api.prepare(video, [named], tmp_path / "out", start_frame=5, end_frame=9)
    assert [a.frame for a in job.annotations] == [7]


def test_links_planted_at_the_runs_fixed_folder_names_are_refused(tmp_path, squares):
    """``.vostrack-backward`` and ``corrections`` have fixed names in the output folder: a link
    planted there must not send the run's writes, or its clean-up, into another folder."""
    video, frames, labels, first = squares
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "00005.png").write_bytes(b"theirs")
    (victim / "000-00006.png").write_bytes(b"theirs too")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".vostrack-backward").symlink_to(victim)
    last = mask(tmp_path, "last.png", labels[11])
    with pytest.raises(VostrackError, match="is a link or a file"):
        segment(tmp_path, ColourPropagator(), video, [(last, 11)])
    (out / ".vostrack-backward").unlink()

    segment(tmp_path, ColourPropagator(), video, [(first, 0)])
    (out / "corrections").symlink_to(victim)
    fix = mask(tmp_path, "fix.png", labels[6])
    with pytest.raises(VostrackError, match="is a link or a file"):
        segment(tmp_path, ColourPropagator(), video, [(first, 0)], corrections=[(fix, 6)])
    # an --overwrite whose earlier summary names a kept correction does not delete through it
    summary = json.loads((out / "summary.json").read_text())
    summary["corrections"] = [{"stored": "corrections/000-00006.png"}]
    (out / "summary.json").write_text(json.dumps(summary))
    segment(tmp_path, ColourPropagator(), video, [(first, 0)], overwrite=True)
    assert sorted(p.name for p in victim.iterdir()) == ["000-00006.png", "00005.png"]
    assert (victim / "00005.png").read_bytes() == b"theirs"
    assert (victim / "000-00006.png").read_bytes() == b"theirs too"


def test_an_end_frame_before_the_start_frame_is_one_line():
    with pytest.raises(VostrackError, match=r"end frame \(3\) comes before the start frame \(5\)"):
        Plan.make(10, {5: [1]}, "both", first=5, last=3)
