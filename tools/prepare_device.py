"""Prepare what a training run on a lent GPU machine carries (nothing of it is committed).

    python tools/prepare_device.py --config configs/train-davis.json [--height 320]
        [--init models/default/network.weights.h5]
    (on the device, tools/train_on_device.sh runs: python3 tools/prepare_device.py --unpack)

Writes, in the repository's root (both folders are git-ignored; name them in the device tool's
`carry`):
- ``.whl/``: the wheels the device machine lacks (keras and what it needs there), for Python
  3.12 manylinux x86_64;
- ``.devdata/``: a down-scaled copy of the training data the config names (DAVIS trees with
  their frames packed as H.264 videos, image+mask folders as JPEG/PNG) and ``init/``, the
  network's starting weights (ImageNet backbone, new heads) as fp16 shards, so the backbone's
  weight package need not travel. With ``--init`` a tracked weights file (the shipped model's,
  say: training continues from it) is named instead: it travels with the tree, nothing is copied.
The device machine has no network and no TensorFlow: tools/train_on_device.sh trains there with
KERAS_BACKEND=jax. Keep the whole carry under 64 MiB (the script prints its size).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ["keras", "optree", "namex"]
CARRY_LIMIT = 64 * 2**20  # what a device call may send: tracked files and carried folders


def download_wheels(target: Path) -> None:
    target.mkdir(exist_ok=True)
    platforms = [
        f"--platform={p}"
        for p in (
            "manylinux_2_28_x86_64",
            "manylinux_2_27_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
        )
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(target),
            *WHEELS,
        ],
        check=True,
    )


def pack_frames(folder: Path, target: Path, height: int) -> None:
    """A folder of video frames as one H.264 file (a tenth of the JPEGs' size: the carry to a
    device machine is 64 MiB) plus the frame names; :func:`unpack` restores the JPEGs there."""
    import imageio_ffmpeg

    from vostrack.io.frames import list_images, read_image_rgb

    files = list_images(folder)
    target.mkdir(parents=True, exist_ok=True)
    first = read_image_rgb(files[0])
    size = (2 * round(first.shape[1] * height / first.shape[0] / 2), height)
    writer = imageio_ffmpeg.write_frames(
        str(target / "frames.mp4"),
        size,
        fps=24,
        codec="libx264",
        macro_block_size=1,
        output_params=["-crf", "23"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for file in files:
        frame = cv2.resize(read_image_rgb(file), size, interpolation=cv2.INTER_AREA)
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    (target / "frames.txt").write_text("\n".join(f.name for f in files) + "\n")


def unpack(root: Path) -> None:
    """On the device: every frames.mp4 back into its JPEG frames (OpenCV decodes H.264)."""
    for video in sorted(root.rglob("frames.mp4")):
        names = (video.parent / "frames.txt").read_text().split()
        capture = cv2.VideoCapture(str(video))
        for name in names:
            ok, frame = capture.read()
            if not ok:
                sys.exit(f"{video}: fewer frames than {len(names)}")
            cv2.imwrite(str(video.parent / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        capture.release()
        video.unlink()
        (video.parent / "frames.txt").unlink()


def shrink_tree(source: Path, target: Path, height: int) -> None:
    """Every image under ``source`` resized to ``height`` (JPEG frames, PNG masks by nearest);
    the frame folders of a DAVIS / YouTube-VOS tree (under JPEGImages/) packed as videos."""
    for folder in sorted({p.parent for p in source.rglob("JPEGImages/**/*.jpg")}):
        pack_frames(folder, target / folder.relative_to(source), height)
    for path in sorted(source.rglob("*")):
        if not path.is_file() or "JPEGImages" in path.parts:
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            shutil.copy2(path, out)
            continue
        is_mask = path.suffix.lower() == ".png" or "mask" in str(path.parent).lower()
        flag = cv2.IMREAD_UNCHANGED if is_mask else cv2.IMREAD_COLOR
        image = cv2.imread(str(path), flag)
        if image.shape[0] <= height:  # never upscale (the readers resize masks to their image)
            shutil.copy2(path, out)
            continue
        scale = height / image.shape[0]
        size = (max(1, round(image.shape[1] * scale)), height)
        if is_mask and path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:  # keep the palette: label = palette index
                im.resize(size, Image.NEAREST).save(out)
        else:
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out), small, [cv2.IMWRITE_JPEG_QUALITY, 80])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument(
        "--init",
        type=Path,
        help="start from these weights (a tracked file, relative to the "
        "repository root) instead of the ImageNet backbone",
    )
    parser.add_argument(
        "--unpack",
        action="store_true",
        help="on the device machine: restore the packed frames in .devdata",
    )
    args = parser.parse_args()
    if args.unpack:
        unpack(ROOT / ".devdata")
        return
    if args.config is None:
        parser.error("--config is required")
    config = json.loads(args.config.read_text())
    download_wheels(ROOT / ".whl")
    data = ROOT / ".devdata"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    device_specs = []
    for spec in config["data"]:
        path = spec["path"]
        if path != "procedural":
            name = Path(path).name
            shrink_tree(
                (ROOT / path).resolve() if not Path(path).is_absolute() else Path(path),
                data / name,
                args.height,
            )
            path = f".devdata/{name}"
        device_specs.append({**spec, "path": path})

    if args.init is not None:
        listed = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(args.init)], cwd=ROOT, capture_output=True
        )
        if listed.returncode != 0:
            parser.error(
                f"--init {args.init}: not a tracked file of the repository (only "
                "those travel without being carried)"
            )
        init_path = args.init.as_posix()
    else:
        from vostrack.network.config import model_from_dict
        from vostrack.network.vos import VosNetwork
        from vostrack.training.checkpoints import NETWORK, network_arrays, save_arrays

        network = VosNetwork(*model_from_dict(config["model"]))
        init = data / "init"
        init.mkdir()
        save_arrays(
            init, NETWORK, {k: a.astype(np.float16) for k, a in network_arrays(network).items()}
        )
        init_path = ".devdata/init"
    (data / "config.json").write_text(
        json.dumps({**config, "data": device_specs, "init": init_path}, indent=2)
    )
    total = sum(p.stat().st_size for p in (ROOT / ".whl").rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout
    total += sum((ROOT / f).stat().st_size for f in tracked.decode().split("\0") if f)
    print(
        f"what travels: the tracked files + .whl + .devdata = {total / 2**20:.1f} MiB "
        f"(limit 64); the device config is .devdata/config.json"
    )
    if total > CARRY_LIMIT:
        sys.exit(
            "over the device's 64 MiB: down-scale the data further (--height 240) or start "
            "from a tracked weights file (--init models/default/network.weights.h5)"
        )


if __name__ == "__main__":
    main()
