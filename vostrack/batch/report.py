"""The batch's record: one row per video, ``OUT_ROOT/batch.json`` (written atomically after
every video, so that a re-run knows the failures even of a batch that was killed) and the
table printed at the end."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from vostrack.batch.jobs import VideoJob
from vostrack.io.atomic import write_json
from vostrack.io.disk import write_failure

log = logging.getLogger(__name__)

REPORT_NAME = "batch.json"
FORMAT = "vostrack-batch/1"
# complete: segmented now; skipped: complete from an earlier run; failed: its one-line error;
# interrupted: stopped mid-video (a re-run resumes it); pending: not started (Ctrl-C came first).
STATUSES = ("complete", "skipped", "failed", "interrupted", "pending", "running")


class BatchReport:
    def __init__(self, out_root: Path, jobs: list[VideoJob], setup: dict):
        self.path = Path(out_root) / REPORT_NAME
        self.setup = setup
        self.started = time.time()
        self._clock = time.perf_counter()
        self.rows: dict[str, dict] = {
            job.name: {
                "name": job.name,
                "status": "pending",
                "frames": 0,
                "frames_per_second": None,
                "error": None,
                "attempts": 0,
                "output": str(Path(out_root) / job.name),
                **job.identity(),
            }
            for job in jobs
        }

    def earlier_failures(self, jobs: list[VideoJob]) -> dict[str, dict]:
        """The videos the last batch in OUT_ROOT recorded as failed, for the same input and
        masks (a changed row is a new job)."""
        try:
            earlier = json.loads(self.path.read_text(encoding="utf-8"))
            rows = earlier["videos"]
            if not isinstance(rows, list):
                raise TypeError
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; videos that failed before are run again", self.path)
            return {}
        failed = {}
        for job in jobs:
            same = [
                r
                for r in rows
                if isinstance(r, dict)
                and r.get("name") == job.name
                and all(r.get(k) == v for k, v in job.identity().items())
            ]
            if same and same[0].get("status") == "failed":
                failed[job.name] = same[0]
        return failed

    def update(self, name: str, **fields) -> None:
        self.rows[name].update(fields)

    def counts(self) -> Counter:
        return Counter(r["status"] for r in self.rows.values())

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._clock

    def status(self, interrupted: bool = False, finished: bool = True) -> str:
        if interrupted:
            return "interrupted"
        if not finished:
            return "running"
        return "failed" if self.counts()["failed"] else "complete"

    def write(self, status: str, strict: bool = False) -> None:
        """Write batch.json; ``strict``: a write error is the batch's error (the last write),
        otherwise a warning (a later write may succeed)."""
        counts = self.counts()
        wall = self.wall_s
        computed = sum(r.get("frames_computed", 0) for r in self.rows.values())
        record = {
            "format": FORMAT,
            "status": status,
            **self.setup,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "wall_s": round(wall, 3),
            "totals": {
                "videos": len(self.rows),
                **{s: counts[s] for s in STATUSES if counts[s]},
                "frames": sum(r["frames"] for r in self.rows.values()),
                "frames_computed": computed,
                "frames_per_second": round(computed / wall, 3) if wall > 0 else None,
                "videos_per_hour": round(3600 * counts["complete"] / wall, 1) if wall > 0 else None,
            },
            "videos": list(self.rows.values()),
        }
        try:
            write_json(self.path, record)
        except OSError as exc:
            if strict:
                raise write_failure(exc, self.path) from None
            log.warning("could not write %s (%s)", self.path, exc.strerror or exc)

    def table(self) -> str:
        """One line per video (name, status, frames, frames/s, error) and a line of totals."""
        header = ("video", "status", "frames", "frames/s", "error")
        lines = [
            (
                r["name"],
                r["status"] + (" (earlier run)" if r.get("earlier") else ""),
                str(r["frames"]),
                f"{r['frames_per_second']:.2f}" if r.get("frames_per_second") else "-",
                r.get("error") or "",
            )
            for r in self.rows.values()
        ]
        widths = [max(len(x[i]) for x in [header, *lines]) for i in range(4)]
        text = [
            ("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]).rstrip()
            for row in [header, *lines]
        ]
        counts = self.counts()
        summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        text.append(f"{len(self.rows)} videos: {summary} in {self.wall_s:.1f} s")
        return "\n".join(text)
