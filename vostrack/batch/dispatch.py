"""The queue of a batch's videos, shared by both kinds of workers (local processes, Ray
actors): what to run next, what a finished or dead worker means for its video, the report and
the one progress bar (videos, and frames with their rate)."""

from __future__ import annotations

import logging
import time
from collections import deque

from tqdm import tqdm

from vostrack.batch.jobs import VideoJob
from vostrack.batch.report import BatchReport

log = logging.getLogger(__name__)

# A video whose worker died is given to a new worker this many times more (it resumes after
# its last written frame); after that it is recorded as failed: "worker died: ...".
RETRIES_AFTER_DEATH = 1


class Dispatcher:
    def __init__(self, jobs: list[VideoJob], report: BatchReport, progress: bool):
        self.pending: deque[VideoJob] = deque(jobs)
        self.report = report
        self.running: dict[str, VideoJob] = {}
        self.stopping = False
        self.frames = 0
        self._shown = 0.0
        done = len(report.rows) - len(jobs)  # earlier failures, not run again
        self.bar = tqdm(
            total=len(report.rows),
            initial=done,
            unit="video",
            disable=not progress,
            dynamic_ncols=True,
            leave=True,
        )

    @property
    def busy(self) -> bool:
        """Whether there is work left: videos running, or waiting (unless stopping)."""
        return bool(self.running) or (bool(self.pending) and not self.stopping)

    def next_job(self) -> VideoJob | None:
        if self.stopping or not self.pending:
            return None
        job = self.pending.popleft()
        self.running[job.name] = job
        row = self.report.rows[job.name]
        self.report.update(job.name, status="running", attempts=row["attempts"] + 1)
        return job

    def add_frames(self, count: int = 1) -> None:
        self.frames += count
        now = time.monotonic()
        if now - self._shown > 0.5:  # a refresh per frame would cost more than the frame
            self._shown = now
            wall = self.report.wall_s
            rate = f", {self.frames / wall:.2f} frames/s" if wall > 0 else ""
            self.bar.set_postfix_str(f"{self.frames} frames{rate}")

    def finished(self, job: VideoJob, row: dict) -> None:
        """A worker's result for ``job`` (its row, see runner.VideoRunner.run)."""
        self.running.pop(job.name, None)
        fields = {k: v for k, v in row.items() if k != "name"}
        self.report.update(job.name, **fields)
        if row["status"] == "failed":
            log.warning("%s failed: %s", job.name, row.get("error"))
        if row["status"] != "interrupted":
            self.bar.update(1)
        self.report.write("running")

    def died(self, job: VideoJob, reason: str) -> None:
        """The worker running ``job`` died (killed, crashed): the video goes to another worker
        once, where it resumes; then it is recorded as failed."""
        self.running.pop(job.name, None)
        attempts = self.report.rows[job.name]["attempts"]
        if attempts <= RETRIES_AFTER_DEATH and not self.stopping:
            log.warning("%s: worker died (%s); the video goes to a new worker", job.name, reason)
            note = f"worker died: {reason}; resumed by another worker"
            self.report.update(job.name, status="pending", error=None, note=note)
            self.pending.appendleft(job)
            return
        status = "interrupted" if self.stopping else "failed"
        self.finished(job, {"status": status, "error": f"worker died: {reason}"})

    def fail_pending(self, reason: str) -> None:
        """No worker can take the rest (none could be started)."""
        while self.pending:
            job = self.pending.popleft()
            self.finished(job, {"status": "failed", "error": reason})

    def stop(self) -> None:
        """Take no more videos (those running stop after their frame in progress)."""
        if not self.stopping:
            log.info("stopping: the videos in progress stop after their current frame")
        self.stopping = True

    def close(self) -> None:
        """Videos still marked running (their worker was killed at a second Ctrl-C) are
        interrupted; those never started stay pending."""
        for name in list(self.running):
            self.report.update(name, status="interrupted")
        self.running.clear()
        self.bar.close()
