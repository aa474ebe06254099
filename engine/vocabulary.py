"""The shared vocabulary: every closed set of names and every fixed file name, defined once.

Other modules import these instead of re-typing tuples and literals (``config`` validates
against them, the CLI offers them as choices, reports and the cluster use the file names).
Adding a precision, backend or objective kind starts here.
"""
from __future__ import annotations

# execution
PRECISIONS = ("fp32", "fp64", "bf16", "fp16", "auto")  # every precision a job may ask for; auto: bf16 where native
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "graphs")
CPU_PRECISIONS = ("fp32", "fp64", "bf16")  # fp16 only on CUDA
HALF_PRECISIONS = ("bf16", "fp16")  # computed under autocast / in a half graph
BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")  # factories: dreamfleet/backends.py

# what is dreamed
OBJECTIVE_KINDS = ("l2", "norm", "channel", "guide", "guide-distance")  # terms: engine/objectives.py
GUIDED_KINDS = ("guide", "guide-distance")  # need --guide

# the update and the sizes
STEP_UNITS = ("pixel", "normalized")
GRAD_NORMS = ("mean_abs", "l2")
INTERPOLATIONS = ("bilinear", "nearest")
OUTPUT_FORMATS = ("same", "png", "jpeg", "webp", "tiff")
SMOOTH_MODES = ("none", "gaussian", "laplacian")  # gradient smoothing: engine/smoothing.py
VIDEO_FLOWS = ("dis", "none")  # --video-flow: OpenCV DIS optical flow, or independent frames

# per-image outcomes
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
STATUSES = (DONE, SKIPPED, FAILED)
FINISHED = (DONE, SKIPPED)  # an output exists for the image
NOT_ATTEMPTED = "not attempted"  # reason prefix of images a stopped job (persistent write error) never finished

# files in the output folder
STATE_DIR = ".dreamfleet"  # OUT/.dreamfleet/: lock, job.json, manifest.jsonl
REPORT_NAME = "dreamfleet-report.json"  # the run summary (totals, config, runs); records are in RECORDS_NAME
RECORDS_NAME = "dreamfleet-report.jsonl"  # per-image records, one JSON line each, appended by every run
RECORD_PARTS_NAME = "dreamfleet-report.parts"  # object stores: the records as part objects below this prefix
LEDGER_NAME = "ledger.jsonl"  # OUT/.dreamfleet/ledger.jsonl: outputs as they land (name, size, stamp, hash)
LEDGER_PARTS_NAME = "ledger"  # object stores: OUT/.dreamfleet/ledger/<run>-<seq>.jsonl parts
CONTACT_SHEET_NAME = "dreamfleet-contact-sheet.png"
MANIFEST_NAME = "manifest.jsonl"
JOB_FILE_NAME = "job.json"
LOCK_NAME = "lock"
VIDEO_STATE_DIR = "video"  # OUT/.dreamfleet/video/<param hash>/<rel>/: a video's dreamed frames and chain state

__all__ = ["BACKENDS", "COMPILE_MODES", "CONTACT_SHEET_NAME", "CPU_PRECISIONS", "DONE", "FAILED", "FINISHED", "GRAD_NORMS",
           "GUIDED_KINDS", "HALF_PRECISIONS", "INTERPOLATIONS", "JOB_FILE_NAME", "LEDGER_NAME", "LEDGER_PARTS_NAME",
           "LOCK_NAME", "MANIFEST_NAME", "NOT_ATTEMPTED", "RECORD_PARTS_NAME", "RECORDS_NAME",
           "OBJECTIVE_KINDS", "OUTPUT_FORMATS", "PRECISIONS", "REPORT_NAME", "SKIPPED", "SMOOTH_MODES", "STATE_DIR", "STATUSES",
           "STEP_UNITS", "VIDEO_FLOWS", "VIDEO_STATE_DIR"]
