"""Prepare what a training run on a lent GPU machine carries (nothing of it is committed).

    python tools/prepare_device.py --config configs/train-davis.json [--height 240]

Writes, in the repository's root (both folders are git-ignored; name them in the device tool's
`carry`):
- ``.whl/``: the wheels the device machine lacks (keras and what it needs there), for Python
  3.12 manylinux x86_64;
- ``.devdata/``: a down-scaled copy of the training data the config names (DAVIS trees and
  image+mask folders, JPEG frames, PNG masks) and ``init/``, the network's starting weights
  (ImageNet backbone, new heads) as fp16 shards, so the backbone's weight package need not travel.
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


def download_wheels(target: Path) -> None:
    target.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                             "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms,
                    "-d", str(target), *WHEELS], check=True)


def shrink_tree(source: Path, target: Path, height: int) -> None:
    """Every image under ``source`` resized to ``height`` (JPEG frames, PNG masks by nearest)."""
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            shutil.copy2(path, out)
            continue
        is_mask = path.suffix.lower() == ".png" or "mask" in str(path.parent).lower()
        flag = cv2.IMREAD_UNCHANGED if is_mask else cv2.IMREAD_COLOR
        image = cv2.imread(str(path), flag)
        scale = height / image.shape[0]
        size = (max(1, round(image.shape[1] * scale)), height)
        if is_mask and path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:  # keep the palette: label = palette index
                im.resize(size, Image.NEAREST).save(out)
        else:
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out), small, [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    download_wheels(ROOT / ".whl")
    data = ROOT / ".devdata"
    data.mkdir(exist_ok=True)
    device_specs = []
    for spec in config["data"]:
        path = spec["path"]
        if path != "procedural":
            name = Path(path).name
            shrink_tree((ROOT / path).resolve() if not Path(path).is_absolute() else Path(path),
                        data / name, args.height)
            path = f".devdata/{name}"
        device_specs.append({**spec, "path": path})

    from vostrack.network.config import ModelConfig
    from vostrack.network.vos import VosNetwork
    from vostrack.training.trainer import save_arrays

    network = VosNetwork(ModelConfig.from_dict(config["model"]))
    init = data / "init"
    shutil.rmtree(init, ignore_errors=True)
    init.mkdir()
    save_arrays(init, "network", [np.asarray(v.numpy()).astype(np.float16)
                                  for v in network.variables])
    (data / "config.json").write_text(json.dumps(
        {**config, "data": device_specs, "init": ".devdata/init"}, indent=2))
    total = sum(p.stat().st_size for p in (ROOT / ".whl").rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    print(f"carry: .whl + .devdata = {total / 2**20:.1f} MiB; the device config is "
          f".devdata/config.json")


if __name__ == "__main__":
    main()
