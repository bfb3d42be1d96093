"""The ``vostrack`` command line.

Every user-fixable problem arrives here as a :class:`VostrackError` and leaves as one line on
stderr with a non-zero exit code; ``--debug`` shows tracebacks instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from vostrack import __version__
from vostrack.errors import VostrackError
from vostrack.inference.plan import DIRECTIONS
from vostrack.registry import DEFAULT_MODEL, RUNTIMES

log = logging.getLogger("vostrack")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter is not for users


class _Group(click.Group):
    """Turns VostrackError (and unexpected errors) into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VostrackError as exc:
            if ctx.meta.get("vostrack.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug, not bad input: still one line unless --debug
            if ctx.meta.get("vostrack.debug"):
                raise
            click.echo(
                f"error: unexpected {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vostrack")
@click.option("-v", "--verbose", is_flag=True, help="Log what vostrack is doing.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """vostrack: segment every object of a video from its mask on one frame."""
    ctx.meta["vostrack.debug"] = debug
    _setup_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)


def _setup_logging(level: int) -> None:
    logger = logging.getLogger("vostrack")
    logger.setLevel(level)
    if not any(getattr(h, "_vostrack", False) for h in logger.handlers):
        handler = _TqdmHandler()
        handler._vostrack = True
        logger.addHandler(handler)
        logger.propagate = False


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _stop_on_signals(job):
    """Ctrl-C and SIGTERM stop ``job`` (a segment run or a trainer) after the frame or step in
    progress, so that it resumes cleanly; a second Ctrl-C stops at once. The previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    stopping = False

    def handle(signum, frame):
        nonlocal stopping
        if signum == signal.SIGINT and stopping:
            raise KeyboardInterrupt
        stopping = True
        job.request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _settings_option(help_text: str):
    return click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=help_text)


def _model_options(context: str) -> Callable:
    """The options that choose and set up the model a command runs (segment, validate);
    ``context`` prefixes their help."""
    options = [
        click.option(
            "--model",
            default=DEFAULT_MODEL,
            show_default=True,
            help=f"{context}Model name (see models/) or path to a model folder.",
        ),
        click.option(
            "--runtime",
            type=click.Choice(RUNTIMES),
            default="frozen",
            show_default=True,
            help=f"{context}Run the frozen TensorFlow graph, the Keras model (any backend), or "
            "the model's LiteRT file without TensorFlow (0.4x the memory, 0.75-0.8x the speed "
            "today; see the README).",
        ),
        click.option(
            "--mirror/--no-mirror",
            default=None,
            help=f"{context}Also segment each frame's mirror image and average the two (about "
            "twice the time; default: the model's own setting).",
        ),
        _settings_option(context + _RUN_SETTINGS_HELP),
    ]

    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_RUN_SETTINGS_HELP = (
    "Change an inference setting of the model for this run (repeatable), e.g. "
    "parts.max_parts=4 or matching.memory_frames=8; the frozen graph and LiteRT take "
    "the settings read at run time, --runtime keras all of them."
)


def _native_logs_quiet(command: Callable) -> Callable:
    """Run ``command`` with TensorFlow's C++ logs (CUDA probes, oneDNN notes) silenced for its
    whole length, Python's stderr (progress, errors) kept: for the commands that build networks.
    ``--debug`` shows everything."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from vostrack.inference.quiet import native_logs_silenced

        debug = click.get_current_context().meta.get("vostrack.debug")
        with native_logs_silenced(not debug):
            return command(*args, **kwargs)

    return run


# ----------------------------------------------------------------------------------- segment
@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--mask",
    "masks",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Mask of the objects on one frame (palette PNG, grayscale or RGB colour-coded). "
    "Repeat for objects that appear later; a folder gives all its masks.",
)
@click.option(
    "--mask-frame",
    "mask_frames",
    multiple=True,
    type=click.IntRange(min=0),
    help="Frame (0-based) of each --mask, in the same order. Default: the frame the "
    "mask file is named after (00012.png -> 12), else the first frame segmented (--start-frame).",
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for one DAVIS-palette PNG per frame and summary.json.",
)
@click.option(
    "--overlay",
    type=click.Path(path_type=Path),
    help="Also write an mp4 of the video with the masks blended in.",
)
@_model_options("")
@click.option(
    "--fps",
    type=click.FloatRange(min=0, min_open=True),
    help="Frame rate of the overlay (default: the video's, 24 for a frame folder).",
)
@click.option(
    "--direction",
    type=click.Choice(DIRECTIONS),
    default="both",
    show_default=True,
    help="Propagate each object from its annotations forward, and backward to the frames "
    "before its first one (both); forward only; or backward only (the video reversed).",
)
@click.option(
    "--start-frame",
    type=click.IntRange(min=0),
    default=0,
    help="First frame to segment (0-based); masks must lie in the range.",
)
@click.option(
    "--end-frame",
    type=click.IntRange(min=0),
    help="Last frame to segment (inclusive; default: the last).",
)
@click.option(
    "--correct",
    "corrections",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A corrected mask of one frame (every object on it as it should be), for the "
    "complete run in -o: only the frames it can change are segmented again. Repeatable.",
)
@click.option(
    "--correct-frame",
    "correction_frames",
    multiple=True,
    type=click.IntRange(min=0),
    help="Frame of each --correct mask, in order (default: the frame it is named after).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing results.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def segment(
    input_path: Path,
    masks: Sequence[Path],
    mask_frames: Sequence[int],
    output_dir: Path,
    overlay: Path | None,
    model: str,
    runtime: str,
    mirror: bool | None,
    settings: Sequence[str],
    fps: float | None,
    direction: str,
    start_frame: int,
    end_frame: int | None,
    corrections: Sequence[Path],
    correction_frames: Sequence[int],
    overwrite: bool,
    resume: bool,
    quiet: bool,
) -> None:
    """Segment the objects given by --mask on every frame of INPUT (a video or a frame folder)."""
    from vostrack import api
    from vostrack.inference.quiet import native_stderr_silenced

    if correction_frames and not corrections:
        raise VostrackError("--correct-frame places --correct masks: give --correct too")
    # Inputs are read and the outputs checked before the model: a refusal costs no wait.
    job = api.prepare(
        input_path,
        masks,
        output_dir,
        mask_frames=mask_frames,
        overlay=overlay,
        fps=fps,
        overwrite=overwrite,
        resume=resume,
        progress=not quiet,
        direction=direction,
        start_frame=start_frame,
        end_frame=end_frame,
        corrections=list(corrections) if corrections else None,
        correction_frames=correction_frames,
    )
    with native_stderr_silenced(not click.get_current_context().meta.get("vostrack.debug")):
        loaded = api.load_model(model, runtime, mirror, settings)
    run = job.start(loaded)
    if not quiet:
        _report_inputs(job.source, job.annotations, job.reader)
    with _stop_on_signals(run):
        summary = run.run()
    click.echo(
        f"{summary['frames_done']} frames, {len(summary['objects'])} object(s) "
        f"-> {output_dir}"
        + (f" and {overlay}" if overlay else "")
        + (
            f" ({summary['frames_per_second']} frames/s)"
            if summary.get("frames_per_second")
            else ""
        )
    )


def _report_inputs(source, annotations, reader) -> None:
    click.echo(
        f"{source.path}: {source.num_frames} frames, {source.width}x{source.height}, "
        f"{source.fps:g} fps",
        err=True,
    )
    for a in annotations:
        names = ", ".join(p.name for p in a.sources)
        click.echo(
            f"  frame {a.frame} ({names}): objects {', '.join(map(str, a.object_ids))}", err=True
        )
    for colour, k in reader.colour_ids.items():
        click.echo(
            f"  object {k} = colour #{colour[0]:02x}{colour[1]:02x}{colour[2]:02x}", err=True
        )


# ---------------------------------------------------------------------------------- validate
@cli.command()
@click.option(
    "--data",
    "data_root",
    required=True,
    type=click.Path(path_type=Path),
    help="A DAVIS tree (JPEGImages/480p, Annotations/480p, optional ImageSets).",
)
@click.option(
    "--results",
    "results_dir",
    type=click.Path(path_type=Path),
    help="Score the palette PNGs in RESULTS/<sequence>/ instead of running a model.",
)
@click.option(
    "--image-set",
    "set_file",
    type=click.Path(path_type=Path),
    help="A file listing the sequences to score (e.g. ImageSets/2016/val.txt).",
)
@click.option("--sequences", help="Comma-separated sequence names to score.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path),
    help="Write one row per object and a final ALL row to this CSV file.",
)
@click.option(
    "--output",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Without --results: where the segmentations go (default: a new temp folder).",
)
@_model_options("Without --results: ")
@click.option(
    "--annotated-frame",
    "annotated",
    type=click.Choice(["first", "middle"]),
    default="first",
    show_default=True,
    help="The annotated frame whose mask each sequence is given (not scored): the first, as "
    "the official protocol, or the middle one (masks then propagate both ways).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace results already in --output, and an existing --csv file.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def validate(
    data_root: Path,
    results_dir: Path | None,
    set_file: Path | None,
    sequences: str | None,
    csv_path: Path | None,
    output_dir: Path | None,
    model: str,
    runtime: str,
    mirror: bool | None,
    settings: Sequence[str],
    annotated: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Score segmentations of a DAVIS tree with the official J and F measures."""
    from vostrack.evaluation.davis import DavisTree, score

    if set_file and sequences:
        raise VostrackError("give --image-set or --sequences, not both")
    for value in settings:
        if "=" not in value and Path(value).is_file():
            raise VostrackError(
                f"--set takes KEY=VALUE (an inference setting); the file of "
                f"sequences to score is --image-set {value}"
            )
    if csv_path is not None:
        _check_new_file(csv_path, "--csv", overwrite)
    for option, folder in (("--data", data_root), ("--results", results_dir)):
        if folder is not None and not folder.is_dir():
            raise VostrackError(
                f"{option} {folder} "
                + ("is a file, not a folder" if folder.exists() else "does not exist")
            )
    tree = DavisTree(data_root)
    names = [s.strip() for s in sequences.split(",") if s.strip()] if sequences else None
    seqs = tree.sequences(set_file=set_file, names=names)
    if results_dir is None:
        if output_dir is None:
            output_dir = Path(tempfile.mkdtemp(prefix="vostrack-validate-"))
            click.echo(f"segmentations go to {output_dir}", err=True)
        _segment_davis(
            tree, seqs, output_dir, model, runtime, mirror, settings, overwrite, quiet, annotated
        )
        results_dir = output_dir
    elif output_dir is not None or settings:
        raise VostrackError(
            f"{'--output' if output_dir is not None else '--set'} is for "
            "validate's own segmentations; with --results there is nothing "
            "to run"
        )
    report = score(tree, results_dir, seqs, annotated)
    click.echo(report.table())
    if csv_path is not None:
        from vostrack.io.disk import write_failure

        try:
            report.write_csv(csv_path)
        except OSError as exc:
            raise write_failure(exc, csv_path) from None
        click.echo(f"wrote {csv_path}", err=True)


def _check_new_file(path: Path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, an output file that cannot be written or would replace one."""
    if path.is_dir():
        raise VostrackError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise VostrackError(f"{option} {path} already exists; use --overwrite to replace it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise VostrackError(f"{option} {path}: {parent} is a file, not a folder")


def _segment_davis(
    tree,
    seqs: list[str],
    output_dir: Path,
    model: str,
    runtime: str,
    mirror: bool | None,
    settings: Sequence[str],
    overwrite: bool,
    quiet: bool,
    annotated: str = "first",
) -> None:
    """Run the segment job on each sequence from its first (or middle) annotated frame."""
    from vostrack.evaluation.segment_tree import segment_tree
    from vostrack.inference.quiet import native_stderr_silenced
    from vostrack.registry import load_propagator

    with native_stderr_silenced(not click.get_current_context().meta.get("vostrack.debug")):
        propagator, model_info = load_propagator(model, runtime, mirror, settings)
    segment_tree(
        tree,
        seqs,
        propagator,
        output_dir,
        model_info,
        overwrite=overwrite,
        progress=not quiet,
        announce=None if quiet else lambda s: click.echo(s, err=True),
        annotated=annotated,
    )


# ---------------------------------------------------------------------------------- train
@cli.command()
@click.option(
    "--data",
    "data",
    multiple=True,
    help="Training data: a DAVIS or YouTube-VOS tree, a "
    "folder of images + masks, or 'procedural'. Repeat to mix (weights: --config).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Training config, JSON or YAML (see configs/train-*.json); options below override it.",
)
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder: config, checkpoints, metrics, TensorBoard scalars.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--steps", type=click.IntRange(min=1), help="Total training steps.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Clips per step.")
@click.option("--size", type=click.IntRange(min=64), help="Training crop size in pixels.")
@click.option("--backbone", help="Backbone name (e.g. efficientnet_lite2, resnet50_v2).")
@click.option(
    "--init",
    "init",
    type=click.Path(path_type=Path),
    help="Start from these network weights (.weights.h5 or a checkpoint folder).",
)
@click.option(
    "--init-only",
    "init_only",
    multiple=True,
    help="Take from the --init checkpoint only the variables under this path "
    "prefix (repeatable; 'backbone': the backbone's).",
)
@click.option(
    "--backbone-weights",
    "backbone_weights",
    type=click.Path(path_type=Path),
    help="The backbone's weights (resnet50_v2: the .weights.h5 that import-backbone "
    "writes) instead of ImageNet weights.",
)
@click.option(
    "--val",
    type=click.Path(path_type=Path),
    help="A DAVIS tree scored every val_every steps; the best checkpoint is kept.",
)
@click.option("--exclude", multiple=True, help="Sequence names never to train on.")
@click.option(
    "--precision",
    type=click.Choice(["float32", "mixed_bfloat16"]),
    help="mixed_bfloat16: backbone and FPN in bfloat16, heads in float32 (GPU).",
)
@click.option(
    "--devices",
    type=click.IntRange(min=0),
    help="Data-parallel devices: 0 every GPU (default), N the first N.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Processes making batches ahead of the step (also with --resume: the "
    "batches do not depend on it).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_native_logs_quiet
def train(
    data: Sequence[str],
    config_path: Path | None,
    run_dir: Path,
    resume: bool,
    steps: int | None,
    batch_size: int | None,
    size: int | None,
    backbone: str | None,
    init: Path | None,
    init_only: Sequence[str],
    backbone_weights: Path | None,
    val: Path | None,
    exclude: Sequence[str],
    precision: str | None,
    devices: int | None,
    workers: int | None,
    quiet: bool,
) -> None:
    """Train the network (on a GPU: KERAS_BACKEND=jax; see tools/train_on_device.sh)."""
    import dataclasses

    from vostrack.training.config import DataSpec, TrainConfig
    from vostrack.training.runs import open_run

    config = None
    if not resume:
        values: dict = {}
        if config_path is not None:
            values = _read_config(config_path)
        # Where the weights come from is checked across options (the backbone, its weights
        # file, init): those options join the file's before the config is checked.
        weights: dict = {}
        if init is not None:
            weights["init"] = str(init)
        if init_only:
            weights["init_only"] = list(init_only)
        if backbone_weights is not None:
            weights["backbone_weights"] = str(backbone_weights)
        if backbone:
            model = values.get("model", TrainConfig.from_dict({}).model.to_dict())
            weights["model"] = {**model, "backbone": backbone} if isinstance(model, dict) else model
        config = TrainConfig.from_dict({**values, **weights})
        overrides = {
            k: v
            for k, v in (
                ("steps", steps),
                ("batch_size", batch_size),
                ("size", size),
                ("precision", precision),
                ("devices", devices),
            )
            if v is not None
        }
        if data:
            overrides["data"] = tuple(DataSpec(str(d)) for d in data)
        if val is not None:
            overrides["val"] = str(val)
        if exclude:
            overrides["exclude"] = tuple(exclude)
        if steps is not None and "warmup_steps" not in values:
            overrides["warmup_steps"] = min(config.warmup_steps, steps)
        config = dataclasses.replace(config, **overrides)
        for spec in config.data:
            if spec.path != "procedural" and not Path(spec.path).exists():
                raise VostrackError(f"--data {spec.path}: not found")
    elif (
        any(
            v is not None
            for v in (
                config_path,
                steps,
                batch_size,
                size,
                backbone,
                init,
                val,
                precision,
                backbone_weights,
            )
        )
        or data
        or exclude
        or init_only
    ):
        raise VostrackError(
            "--resume continues the run as it was configured; give only --out "
            "(and --workers or --devices)"
        )
    trainer = open_run(run_dir, config, resume, workers=workers, devices=devices)
    with _stop_on_signals(trainer):
        metrics = trainer.train(progress=not quiet)
    click.echo(
        f"step {trainer.step}: loss {metrics.get('loss', float('nan')):.4f} -> "
        f"{run_dir / 'checkpoints' / 'latest'}"
    )


def _read_config(path: Path) -> dict:
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VostrackError(f"cannot read config {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise VostrackError(
                "YAML configs need PyYAML (the train extra); JSON works as it is"
            ) from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise VostrackError(
                f"config {path} is not valid YAML ({' '.join(str(exc).split())})"
            ) from None
    else:
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise VostrackError(f"config {path} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise VostrackError(
            f"config {path} must hold a mapping of options, not {type(values).__name__}"
        )
    return values


@cli.command("validate-backbone")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    help="ImageNet-2012 val images: flat (ILSVRC2012_val_00000001.JPEG ...) or one "
    "folder per synset (n01440764/...). Required.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(path_type=Path),
    help="Ground truth, told by its columns: the devkit's "
    "ILSVRC2012_validation_ground_truth.txt (one 1-based ILSVRC2012_ID per line, "
    "devkit class order; needs --synsets), or two columns 'IMAGE LABEL' with "
    "0-based labels in sorted-synset order (val.txt). Optional with synset "
    "folders (then checked against them).",
)
@click.option(
    "--synsets",
    "synsets_path",
    type=click.Path(path_type=Path),
    help="The devkit's 1000 synsets in ILSVRC2012_ID order: one wnid per line (line i "
    "= ID i), or lines 'ID wnid ...' / 'wnid ID ...' (a meta.mat text export, "
    "map_clsloc.txt). Converts a devkit ground truth to sorted-synset order; "
    "with synset folders, names the 1000 classes when fewer folders are given.",
)
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet_lite2", "resnet50_v2"]),
    default="efficientnet_lite2",
    show_default=True,
    help="efficientnet_lite2: weights from its package, TPU-repo eval (central "
    "260/292 crop, bicubic to 260). resnet50_v2: needs --checkpoint, r1.8 eval "
    "(short side 256, centre 224, minus means); its background logit 0 is "
    "dropped.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="resnet50_v2 only, required: the TF1 checkpoint (prefix or folder) or a "
    ".weights.h5 converted from it. The official one, "
    "resnet_v2_imagenet_checkpoint of tensorflow/models r1.8, scores top-1 "
    "76.47 %.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Evaluate only the first N images (in file-name order), for a quick check.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def validate_backbone(
    data_dir: Path | None,
    labels_path: Path | None,
    synsets_path: Path | None,
    backbone: str,
    checkpoint: Path | None,
    limit: int | None,
    batch_size: int,
    quiet: bool,
) -> None:
    """Top-1 / top-5 of a backbone's ImageNet classifier on ImageNet-2012 val.

    Classes are numbered in sorted-synset order (the 1000 wnids sorted: 0 = n01440764 tench,
    285 = n02124075 Egyptian cat); a devkit ground truth is converted with --synsets. Prints
    'top-1 xx.xx %  top-5 yy.yy %  (N images)'.
    """
    from vostrack.evaluation.imagenet import check_weights, evaluate, load_val_set

    if data_dir is None:
        raise VostrackError("give --data, the ImageNet-2012 val folder")
    check_weights(backbone, checkpoint)
    val_set = load_val_set(data_dir, labels_path, synsets_path).head(limit)
    if not quiet:
        click.echo(f"{data_dir}: {len(val_set)} images ({val_set.layout})", err=True)
    result = evaluate(val_set, backbone, checkpoint, batch_size=batch_size, progress=not quiet)
    click.echo(result.line())


@cli.command()
@click.option(
    "--model", help="An installed model (name or folder) to export again from its Keras weights."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="A model config (JSON, e.g. configs/matching.json): build it from the "
    "backbone's ImageNet weights (needs the train extra).",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="A training run folder (its latest checkpoint) or a checkpoint folder.",
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The model folder to write (frozen.pb, saved_model/, weights, manifest.json).",
)
@click.option("--name", help="Model name recorded in the manifest (default: the folder's name).")
@click.option("--no-saved-model", is_flag=True, help="Skip the SavedModel (smaller folder).")
@click.option(
    "--litert",
    is_flag=True,
    help="Also write the LiteRT model (model.tflite), which `segment --runtime litert` runs "
    "without TensorFlow (needs the litert extra to run).",
)
@click.option(
    "--weights-dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="How the weights are stored (they are computed in float32 either way).",
)
@click.option(
    "--max-parts",
    type=click.IntRange(min=1),
    help="Parts per object at inference (the weights do not depend on it; default: "
    "the model's own).",
)
@click.option(
    "--part-tracker/--no-part-tracker",
    "track",
    default=None,
    help="Move the parts with the Siamese tracker, or with their object's predicted "
    "mask (the weights do not depend on it; default: the model's own).",
)
@click.option(
    "--mirror/--no-mirror",
    default=None,
    help="Whether segment averages each frame with its mirror image unless told "
    "(a run-time setting; default: the model's own).",
)
@_settings_option(
    "Set an inference setting of the exported model (repeatable), e.g. "
    "matching.top_k=20: the settings built into the graph too."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder.")
@_native_logs_quiet
def export(
    model: str | None,
    config_path: Path | None,
    checkpoint: Path | None,
    output_dir: Path,
    name: str | None,
    no_saved_model: bool,
    litert: bool,
    weights_dtype: str,
    max_parts: int | None,
    track: bool | None,
    mirror: bool | None,
    settings: Sequence[str],
    overwrite: bool,
) -> None:
    """Export a model as a frozen TF graph + SavedModel + Keras weights + manifest."""
    if sum(x is not None for x in (model, config_path, checkpoint)) != 1:
        raise VostrackError(
            "give one of --model (an installed model), --config (a config file) "
            "or --checkpoint (a training run)"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise VostrackError(f"{output_dir} exists and is not a folder; give a new folder name")
    if output_dir.exists() and not overwrite:
        raise VostrackError(
            f"model folder {output_dir} already exists; use --overwrite to replace it"
        )
    import json

    from vostrack.network.config import (
        InferenceSettings,
        ModelConfig,
        apply_overrides,
        model_from_dict,
    )
    from vostrack.network.vos import VosNetwork, load_network
    from vostrack.registry import manifest_config, read_manifest, resolve_model
    from vostrack.serving.export import export_model

    overrides = [*settings]
    for key, value in (
        ("parts.max_parts", max_parts),
        ("parts.track", track),
        ("mirror_average", mirror),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")

    def configured(config: ModelConfig, settings: InferenceSettings) -> InferenceSettings:
        for option, value in (("--max-parts", max_parts), ("--part-tracker", track)):
            if value is not None and not config.parts:
                raise VostrackError(f"{option}: this model has no part path")
        return apply_overrides(settings, overrides, config)

    if config_path is not None:
        try:
            config, settings = model_from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise VostrackError(f"cannot read config {config_path}: {exc}") from None
        network = VosNetwork(config, configured(config, settings), weights="imagenet")
    elif checkpoint is not None:
        from vostrack.training.checkpoints import checkpoint_config, checkpoint_network

        trained = checkpoint_config(checkpoint)[1]
        settings = configured(trained.model, trained.settings)  # fails early
        network = checkpoint_network(checkpoint, settings)
    else:
        model_dir = resolve_model(model)
        manifest = read_manifest(model_dir)
        config, settings = manifest_config(model_dir, manifest)
        network = load_network(
            model_dir,
            config,
            configured(config, settings),
            manifest["files"]["keras_weights"],
        )
    export_model(
        network,
        output_dir,
        name or output_dir.name,
        overwrite=overwrite,
        saved_model=not no_saved_model,
        weights_dtype=weights_dtype,
        litert=litert,
    )
    click.echo(f"exported {output_dir}")


# --------------------------------------------------------------------------- import-backbone
@cli.command("import-backbone")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="The Keras weights file to write (*.weights.h5).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def import_backbone(checkpoint: Path, output: Path, overwrite: bool) -> None:
    """Convert the official TF1 ResNet-50 v2 checkpoint (TF model zoo r1.8 official/resnet)
    into Keras weights of the resnet50_v2 backbone (with its 1001-class top).

    CHECKPOINT is the checkpoint prefix (model.ckpt-225207), one of its files, or its folder.
    """
    from vostrack.network.tf1_checkpoint import convert_resnet_v2_checkpoint

    convert_resnet_v2_checkpoint(checkpoint, output, "resnet50_v2", overwrite=overwrite)
    click.echo(f"wrote {output}")


def _register_batch() -> None:
    from vostrack.batch.command import build

    cli.add_command(build(_model_options, _stop_on_signals))


_register_batch()


def main() -> None:
    cli(prog_name="vostrack")
