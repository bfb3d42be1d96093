"""``vostrack batch``: many videos, each one unit of work for the segment pipeline.

``jobs`` reads the manifest (CSV, JSONL, a DAVIS or YouTube-VOS tree), ``runner`` segments one
video in a worker (skip, resume, failure as one line), ``dispatch`` hands videos to workers and
keeps the report and the progress bar, ``local`` runs spawned worker processes and
``ray_workers`` Ray actors, ``report`` writes batch.json and the table, ``command`` is the CLI.
"""
