"""The ``vostrack batch`` command. Built by :func:`build` with the CLI's own model options and
signal handling (passed in, so that this module never imports the CLI module that registers it);
everything heavy is imported when the command runs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from vostrack.errors import InterruptedRun, VostrackError
from vostrack.io.locks import claim_folder

log = logging.getLogger(__name__)


def build(model_options: Callable, stop_on_signals: Callable) -> click.Command:
    """The click command; ``model_options`` adds --model, --runtime, --mirror and --set, and
    ``stop_on_signals(job)`` is the context in which Ctrl-C or SIGTERM calls
    ``job.request_stop()`` (a second Ctrl-C raises KeyboardInterrupt), as for ``segment``."""

    @click.command("batch")
    @click.argument("jobs_path", metavar="JOBS", type=click.Path(path_type=Path))
    @click.option(
        "-o",
        "--output",
        "out_root",
        required=True,
        type=click.Path(path_type=Path),
        help="Folder for the results: OUT/<name>/ per video (PNGs, summary.json) and "
        "OUT/batch.json. With --ray, a path every node can write.",
    )
    @click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Worker processes (with --ray: Ray actors), each with the model loaded once.",
    )
    @click.option(
        "--ray",
        "ray_address",
        metavar="ADDRESS",
        help="Run on Ray actors: a cluster's ADDRESS, 'auto' (the cluster running here or "
        "RAY_ADDRESS) or 'local' (start a one-machine Ray for this batch). Needs the ray extra.",
    )
    @click.option(
        "--cpus-per-worker",
        type=click.FloatRange(min=0, min_open=True),
        help="With --ray: CPUs each actor holds (and the frozen graph's threads). Default 1.",
    )
    @click.option(
        "--gpus-per-worker",
        type=click.FloatRange(min=0),
        help="With --ray: GPUs each actor holds (fractions share one). Default 0.",
    )
    @click.option(
        "--overlay",
        is_flag=True,
        help="Also write OUT/<name>/overlay.mp4, the video with the masks blended in.",
    )
    @model_options("")
    @click.option(
        "--retry-failed",
        is_flag=True,
        help="Run again the videos that failed in the last batch into OUT (skipped otherwise).",
    )
    @click.option(
        "--overwrite",
        is_flag=True,
        help="Redo every video from the start, complete ones included.",
    )
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
    def batch(
        jobs_path: Path,
        out_root: Path,
        workers: int,
        ray_address: str | None,
        cpus_per_worker: float | None,
        gpus_per_worker: float | None,
        overlay: bool,
        model: str,
        runtime: str,
        mirror: bool | None,
        settings: Sequence[str],
        retry_failed: bool,
        overwrite: bool,
        quiet: bool,
    ) -> None:
        """Segment many videos: JOBS is a CSV or JSONL manifest (one row per video), or a
        DAVIS or YouTube-VOS tree. Complete videos are skipped, interrupted ones resumed;
        exit status 1 if any video failed."""
        from vostrack.batch.dispatch import Dispatcher
        from vostrack.batch.jobs import read_jobs
        from vostrack.batch.report import BatchReport
        from vostrack.batch.runner import BatchOptions, ModelSpec

        ctx = click.get_current_context()
        if ray_address is None and (cpus_per_worker or gpus_per_worker):
            raise VostrackError("--cpus-per-worker and --gpus-per-worker are for --ray")
        jobs = read_jobs(jobs_path)
        spec = ModelSpec(model, runtime, mirror, tuple(settings))
        options = BatchOptions(Path(os.path.abspath(out_root)), overlay, overwrite)
        if ray_address is not None:
            from vostrack.batch.ray_workers import import_ray

            import_ray()  # missing Ray is a one-line error before anything is made
        created = not out_root.exists()
        lock = claim_folder(
            out_root,
            f"another vostrack batch is writing to {out_root}; wait for it or give another folder",
        )
        report = BatchReport(
            options.out_root,
            jobs,
            {
                "jobs": os.path.abspath(jobs_path),
                "output": str(options.out_root),
                "mode": "ray" if ray_address is not None else "local",
                "ray": ray_address,
                "workers": workers,
                "model": {
                    "name": model,
                    "runtime": runtime,
                    "mirror": mirror,
                    "settings": list(settings),
                },
            },
        )
        earlier = {} if overwrite or retry_failed else report.earlier_failures(jobs)
        for name, row in earlier.items():
            report.update(
                name, status="failed", error=row.get("error"), frames=row.get("frames", 0)
            )
            report.update(name, earlier=True)
        todo = [j for j in jobs if j.name not in earlier]
        if not quiet:
            where = f"Ray ({ray_address})" if ray_address is not None else "local"
            click.echo(
                f"{len(jobs)} videos -> {out_root} ({where}, {workers} worker"
                f"{'s' if workers > 1 else ''})"
                + (f"; {len(earlier)} failed before (--retry-failed runs them)" if earlier else ""),
                err=True,
            )
        level = logging.getLogger("vostrack").getEffectiveLevel()
        debug = bool(ctx.meta.get("vostrack.debug"))
        started_ray = False
        dispatcher = None
        interrupted = False
        try:
            if ray_address is not None:
                from vostrack.batch.ray_workers import RayPool, connect

                started_ray = connect(ray_address)
                pool = RayPool(
                    spec,
                    options,
                    workers,
                    cpus=cpus_per_worker or 1.0,
                    gpus=gpus_per_worker or 0.0,
                    log_level=level,
                )
                pool.check_resources(fixed=started_ray)
            else:
                from vostrack.batch.local import LocalPool

                pool = LocalPool(spec, options, workers, log_level=level, debug=debug)
            dispatcher = Dispatcher(todo, report, progress=not quiet)
            with stop_on_signals(pool):
                try:
                    pool.run(dispatcher)
                except KeyboardInterrupt:  # a second Ctrl-C: workers were killed
                    interrupted = True
        except VostrackError:
            if dispatcher is None or not any(
                r["status"] not in ("pending", "running") or r.get("earlier")
                for r in report.rows.values()
            ):
                _release(lock, out_root if created else None)
                lock = None
            raise
        finally:
            if dispatcher is not None:
                dispatcher.close()
            if started_ray:
                import ray

                ray.shutdown()
            if lock is not None:
                _release(lock, None)
        interrupted = interrupted or dispatcher.stopping
        report.write(report.status(interrupted), strict=True)
        click.echo(report.table())
        counts = report.counts()
        if interrupted:
            done = counts["complete"] + counts["skipped"]
            raise InterruptedRun(
                f"interrupted after {done} of {len(jobs)} videos; run the same command again "
                "to continue"
            )
        if counts["failed"]:
            ctx.exit(1)

    return batch


def _release(fd: int, made: Path | None) -> None:
    """Give OUT_ROOT back; ``made``: the folder this batch made, removed if still empty (a
    batch refused before any work leaves nothing behind)."""
    os.close(fd)
    if made is not None:
        with contextlib.suppress(OSError):
            made.rmdir()
