"""Scoring a DAVIS tree: tiny trees built here, the error cases, and the official values."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vostrack.errors import VostrackError
from vostrack.evaluation.davis import CSV_HEADER, DavisTree, Report, score
from vostrack.evaluation.metrics import boundary_f, jaccard, statistics
from vostrack.io.palette import write_label_png

H, W = 48, 64
HEADER_LINE = "sequence,object,J_mean,J_recall,J_decay,F_mean,F_recall,F_decay"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-dev"


def box(r0: int, r1: int, c0: int, c1: int, value: int = 1) -> np.ndarray:
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[r0:r1, c0:c1] = value
    return labels


def make_sequence(root: Path, seq: str, frames: list[np.ndarray], davis2016: bool) -> None:
    ann = root / "Annotations" / "480p" / seq
    img = root / "JPEGImages" / "480p" / seq
    ann.mkdir(parents=True)
    img.mkdir(parents=True)
    for t, labels in enumerate(frames):
        if davis2016:
            Image.fromarray(labels, mode="L").save(ann / f"{t:05d}.png")
        else:
            write_label_png(ann / f"{t:05d}.png", labels)
        Image.new("RGB", (labels.shape[1], labels.shape[0])).save(img / f"{t:05d}.jpg")


def write_results(results: Path, seq: str, frames: list[np.ndarray]) -> None:
    (results / seq).mkdir(parents=True, exist_ok=True)
    for t, labels in enumerate(frames):
        write_label_png(results / seq / f"{t:05d}.png", labels)


def moving_box_2016(n: int = 6) -> list[np.ndarray]:
    return [box(10, 30, 10 + 2 * t, 30 + 2 * t, value=255) for t in range(n)]


def two_objects_2017(n: int = 5) -> list[np.ndarray]:
    frames = []
    for t in range(n):
        labels = box(5, 20, 5 + t, 25 + t, value=1)
        labels[25:40, 30:50] = 2
        labels[0:2, :] = 255  # a void band
        frames.append(labels)
    return frames


@pytest.fixture
def tree_2016(tmp_path: Path) -> DavisTree:
    make_sequence(tmp_path / "davis", "cat", moving_box_2016(), davis2016=True)
    return DavisTree(tmp_path / "davis")


@pytest.fixture
def tree_2017(tmp_path: Path) -> DavisTree:
    root = tmp_path / "davis"
    make_sequence(root, "pair", two_objects_2017(), davis2016=False)
    make_sequence(root, "solo", [box(8, 30, 8, 40) for _ in range(4)], davis2016=False)
    return DavisTree(root)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- reading the tree


def test_ground_truth_2016_is_one_object_without_void(tree_2016: DavisTree):
    gt = tree_2016.read_ground_truth("cat")
    assert gt.masks.shape == (1, 6, H, W) and gt.masks.dtype == bool
    assert gt.void is None
    assert gt.frames == [f"{t:05d}" for t in range(6)]
    np.testing.assert_array_equal(gt.masks[0, 2], box(10, 30, 14, 34) > 0)


def test_ground_truth_2017_objects_and_void(tree_2017: DavisTree):
    gt = tree_2017.read_ground_truth("pair")
    assert gt.n_objects == 2
    assert gt.masks.shape == (2, 5, H, W)
    assert gt.void is not None and gt.void.shape == (5, H, W)
    assert gt.void[:, 0:2].all() and not gt.void[:, 2:].any()
    np.testing.assert_array_equal(gt.masks[1, 3], box(25, 40, 30, 50) > 0)
    assert not (gt.masks & gt.void[None]).any()


def test_object_count_comes_from_first_frame(tmp_path: Path):
    frames = [box(5, 20, 5, 20, value=1) for _ in range(4)]
    frames[2][30:40, 30:40] = 3  # an id the first frame does not have: not an object
    make_sequence(tmp_path, "late", frames, davis2016=False)
    gt = DavisTree(tmp_path).read_ground_truth("late")
    assert gt.n_objects == 1


def test_palette_single_object_is_2017_style(tmp_path: Path):
    frames = [box(5, 20, 5, 20, value=1) for _ in range(3)]
    frames[1][0, :] = 255
    make_sequence(tmp_path, "p", frames, davis2016=False)
    gt = DavisTree(tmp_path).read_ground_truth("p")
    assert gt.n_objects == 1 and gt.void is not None and gt.void[1, 0].all()
    assert not gt.masks[0, 1, 0].any()


def test_sequences_default_sorted_and_need_images(tmp_path: Path):
    for name in ("zebra", "apple"):
        make_sequence(tmp_path, name, moving_box_2016(3), davis2016=True)
    (tmp_path / "Annotations" / "480p" / "no-images").mkdir()
    tree = DavisTree(tmp_path)
    assert tree.sequences() == ["apple", "zebra"]
    assert tree.sequences(names=["zebra"]) == ["zebra"]
    with pytest.raises(VostrackError) as excinfo:
        tree.sequences(names=["no-images"])
    assert "no-images" in one_line_error(excinfo)


def test_set_file_selects_and_orders(tmp_path: Path):
    for name in ("a", "b", "c"):
        make_sequence(tmp_path, name, moving_box_2016(3), davis2016=True)
    tree = DavisTree(tmp_path)
    set_file = tree.image_set(2016, "val")
    set_file.parent.mkdir(parents=True)
    set_file.write_text("c\n\na\n", encoding="utf-8")
    assert tree.sequences(set_file=set_file) == ["c", "a"]
    with pytest.raises(VostrackError) as excinfo:
        tree.sequences(set_file=set_file, names=["b"])
    assert "'b'" in one_line_error(excinfo)


def test_no_sequences_says_where_it_looked(tmp_path: Path):
    with pytest.raises(VostrackError) as excinfo:
        DavisTree(tmp_path).sequences()
    message = one_line_error(excinfo)
    assert str(tmp_path / "Annotations" / "480p") in message
    assert str(tmp_path / "JPEGImages" / "480p") in message
    with pytest.raises(VostrackError):
        score(DavisTree(tmp_path), tmp_path)


def test_unknown_sequence(tree_2016: DavisTree, tmp_path: Path):
    with pytest.raises(VostrackError) as excinfo:
        tree_2016.sequences(names=["dog"])
    assert "'dog'" in one_line_error(excinfo)
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, tmp_path, ["dog"])
    assert "'dog'" in one_line_error(excinfo)


def test_missing_set_file(tree_2016: DavisTree, tmp_path: Path):
    missing = tmp_path / "ImageSets" / "2016" / "nope.txt"
    with pytest.raises(VostrackError) as excinfo:
        tree_2016.sequences(set_file=missing)
    assert str(missing) in one_line_error(excinfo)


def test_set_file_with_unknown_sequence(tree_2016: DavisTree, tmp_path: Path):
    set_file = tmp_path / "val.txt"
    set_file.write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(VostrackError) as excinfo:
        tree_2016.sequences(set_file=set_file)
    assert "'dog'" in one_line_error(excinfo)


# ---------------------------------------------------------------- scoring


def test_perfect_2016_results_and_csv(tree_2016: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    write_results(results, "cat", [(f > 0).astype(np.uint8) for f in moving_box_2016()])
    report = score(tree_2016, results)
    assert isinstance(report, Report)
    assert [(o.sequence, o.object_id) for o in report.objects] == [("cat", 1)]
    m = report.objects[0].measures
    assert (m.j_mean, m.j_recall, m.j_decay, m.f_mean, m.f_recall, m.f_decay) == (
        1.0,
        1.0,
        0.0,
        1.0,
        1.0,
        0.0,
    )
    assert report.overall.jf == 1.0

    out = tmp_path / "scores" / "scores.csv"
    report.write_csv(out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER_LINE == ",".join(CSV_HEADER)
    assert lines[1] == "cat,1,1.000000,1.000000,0.000000,1.000000,1.000000,0.000000"
    assert lines[-1] == "ALL,,1.000000,1.000000,0.000000,1.000000,1.000000,0.000000"
    assert len(lines) == 3
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temporary left


def test_first_and_last_frames_are_not_scored(tree_2016: DavisTree, tmp_path: Path):
    gt = [(f > 0) for f in moving_box_2016()]
    # Middle frames shifted by a known amount, first and last frames plain wrong.
    pred = [np.roll(g, 3 * t, axis=1) for t, g in enumerate(gt)]
    pred[0] = np.zeros((H, W), dtype=bool)
    pred[-1] = np.ones((H, W), dtype=bool)
    results = tmp_path / "results"
    write_results(results, "cat", [p.astype(np.uint8) for p in pred])
    report = score(tree_2016, results, ["cat"])

    j = [jaccard(g, p) for g, p in zip(gt[1:-1], pred[1:-1])]
    f = [boundary_f(g, p) for g, p in zip(gt[1:-1], pred[1:-1])]
    m = report.objects[0].measures
    assert (m.j_mean, m.j_recall, m.j_decay) == pytest.approx(statistics(j), abs=1e-12)
    assert (m.f_mean, m.f_recall, m.f_decay) == pytest.approx(statistics(f), abs=1e-12)
    assert m.j_mean < 1.0 and m.j_decay > 0.0  # the shift grows with t


def test_2017_missing_object_is_empty_and_global_means(tree_2017: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    # "pair": object 1 perfect (its void band is not predicted), object 2 never predicted.
    pair = [np.where(f == 1, 1, 0).astype(np.uint8) for f in two_objects_2017()]
    write_results(results, "pair", pair)
    write_results(results, "solo", [box(8, 30, 8, 40) for _ in range(4)])
    report = score(tree_2017, results)

    rows = {(o.sequence, o.object_id): o.measures for o in report.objects}
    assert list(rows) == [("pair", 1), ("pair", 2), ("solo", 1)]
    assert rows["pair", 1].j_mean == 1.0 and rows["pair", 1].f_mean == 1.0
    missing = rows["pair", 2]
    assert (missing.j_mean, missing.j_recall, missing.f_mean, missing.f_recall) == (0, 0, 0, 0)

    per_seq = {s.sequence: s for s in report.sequences}
    assert per_seq["pair"].n_objects == 2 and per_seq["pair"].measures.j_mean == 0.5
    assert per_seq["solo"].measures.jf == 1.0
    # Global numbers are means over the 3 objects, not over the 2 sequences.
    assert report.overall.j_mean == pytest.approx(2 / 3)
    assert report.overall.jf == pytest.approx(2 / 3)

    out = tmp_path / "scores.csv"
    report.write_csv(out)
    with open(out, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == HEADER_LINE.split(",")
    assert [row[:2] for row in table[1:]] == [
        ["pair", "1"],
        ["pair", "2"],
        ["solo", "1"],
        ["ALL", ""],
    ]
    assert table[-1][2] == "0.666667" and table[-1][5] == "0.666667"
    assert table[2][2:] == ["0.000000", "0.000000", "0.000000", "0.000000", "0.000000", "0.000000"]

    text = report.table()
    assert "pair" in text and "solo" in text and text.splitlines()[-1].startswith("ALL")
    assert "0.500" in text  # J mean of "pair"


def test_semi_supervised_protocol_has_no_void(tree_2017: DavisTree, tmp_path: Path):
    # As official: the semi-supervised evaluation passes no void mask, so predicting object 1
    # over the void band costs J.
    results = tmp_path / "results"
    pair = []
    for f in two_objects_2017():
        labels = f.copy()
        labels[0:2, :] = 1
        pair.append(labels)
    write_results(results, "pair", pair)
    report = score(tree_2017, results, ["pair"])
    assert report.objects[0].measures.j_mean < 1.0
    assert report.objects[1].measures.j_mean == 1.0


# ---------------------------------------------------------------- bad results


def perfect_2016(results: Path) -> None:
    write_results(results, "cat", [(f > 0).astype(np.uint8) for f in moving_box_2016()])


def test_results_folder_missing_sequence(tree_2016: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, results)
    assert "'cat'" in one_line_error(excinfo)
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, tmp_path / "nowhere")
    assert "nowhere" in one_line_error(excinfo)


def test_results_missing_frames(tree_2016: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    perfect_2016(results)
    (results / "cat" / "00002.png").unlink()
    (results / "cat" / "00004.png").unlink()
    (results / "cat" / "00005.png").unlink()  # the last frame is not scored: not required
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, results)
    message = one_line_error(excinfo)
    assert "'cat'" in message and "00002.png" in message and "2 of 4" in message


def test_result_size_differs(tree_2016: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    perfect_2016(results)
    write_label_png(results / "cat" / "00003.png", np.zeros((H, W + 1), dtype=np.uint8))
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, results)
    message = one_line_error(excinfo)
    assert "00003.png" in message and f"{W + 1}x{H}" in message


@pytest.mark.parametrize("kind", ["garbage", "truncated", "jpeg", "rgb"])
def test_result_not_a_readable_png(tree_2016: DavisTree, tmp_path: Path, kind: str):
    results = tmp_path / "results"
    perfect_2016(results)
    bad = results / "cat" / "00002.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not an image")
    elif kind == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "jpeg":
        Image.new("L", (W, H)).save(bad, format="JPEG")
    else:
        Image.new("RGB", (W, H)).save(bad, format="PNG")
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, results)
    assert "00002.png" in one_line_error(excinfo)


def test_more_objects_than_ground_truth(tree_2016: DavisTree, tmp_path: Path):
    results = tmp_path / "results"
    perfect_2016(results)
    write_label_png(results / "cat" / "00003.png", box(0, 5, 0, 5, value=2))
    with pytest.raises(VostrackError) as excinfo:
        score(tree_2016, results)
    assert "'cat'" in one_line_error(excinfo)


def test_too_few_frames(tmp_path: Path):
    make_sequence(tmp_path / "davis", "short", moving_box_2016(2), davis2016=True)
    results = tmp_path / "results"
    (results / "short").mkdir(parents=True)
    with pytest.raises(VostrackError) as excinfo:
        score(DavisTree(tmp_path / "davis"), results)
    assert "'short'" in one_line_error(excinfo)


# ---------------------------------------------------------------- official values


def write_shifted(results: Path, tree: DavisTree, seqs: list[str], dy: int, dx: int) -> None:
    for seq in seqs:
        (results / seq).mkdir(parents=True)
        for frame in tree.frame_names(seq):
            gt = np.array(Image.open(tree.annotation_path(seq, frame))) > 0
            pred = np.zeros_like(gt)
            if dx:
                pred[:, dx:] = gt[:, :-dx]
            else:
                pred[dy:, :] = gt[:-dy, :]
            write_label_png(results / seq / f"{frame}.png", pred.astype(np.uint8))


# Official davis2017-evaluation numbers for ground truth shifted right by 5 px / down by 10 px.
OFFICIAL = {
    (0, 5): {
        "blackswan": {"j_mean": 0.898344, "f_mean": 1.0},
        "car-shadow": {"j_mean": 0.927193, "f_mean": 1.0},
        "bmx-trees": {"j_mean": 0.520255, "j_recall": 0.6923, "f_mean": 1.0},
    },
    (10, 0): {
        "blackswan": {"j_mean": 0.779169, "f_mean": 0.555840},
        "car-shadow": {"j_mean": 0.808297, "f_mean": 0.592053},
    },
}


@pytest.mark.parametrize("shift", list(OFFICIAL), ids=["right5", "down10"])
def test_official_values_on_real_davis2016(tmp_path: Path, shift: tuple[int, int]):
    if not REAL_DATA.is_dir():
        pytest.skip(f"{REAL_DATA} not found: the official-value check needs ../shared/data")
    tree = DavisTree(REAL_DATA)
    expected = OFFICIAL[shift]
    seqs = tree.sequences(set_file=tree.image_set(2016, "val"), names=list(expected))
    results = tmp_path / "results"
    write_shifted(results, tree, seqs, *shift)
    report = score(tree, results, seqs)

    measured = {o.sequence: o.measures for o in report.objects}
    assert sorted(measured) == sorted(expected)
    for seq, values in expected.items():
        for name, value in values.items():
            assert getattr(measured[seq], name) == pytest.approx(value, abs=1e-4), (seq, name)
