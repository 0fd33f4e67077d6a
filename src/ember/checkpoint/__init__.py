"""Checkpoint storage: atomic, verifiable checkpoint directories made of data, never code.

This package is rank-agnostic storage. The Accelerator decides *what* to save and coordinates ranks;
this package decides *how* it lands on disk.

Directory format (``format_version`` 1)::

    <root>/                              e.g. <project_dir>/checkpoints
      step-00000120/                     committed by one rename from .tmp-step-00000120; never partial
        manifest.json                    {"format_version": 1, "ember_version": "0.1.0",
                                          <caller meta: step, epoch, world_size, strategy, precision, ...>,
                                          "files": {"model.safetensors": {"size": 123, "sha256": "ab12..."},
                                                    "model/shard-0.safetensors": {...}, ...}}
        model.safetensors                tensors (safetensors format; loaded without pickle)
        optimizer.json                   structure of a state (save_state): JSON skeleton
        optimizer.safetensors            ... and its tensors, keyed as the skeleton says
        state-rank0.json                 per-rank loop counters, sampler position, RNG states
        README.md                        how to load this directory (torch.load cannot), written by commit
      latest                             text file holding the newest committed dir name ("step-00000120")
      .tmp-step-00000130/                being written (ignored by readers, removed by begin/retention)

Writing (every step is fsynced; ``commit`` hashes and renames)::

    tmp = begin(root / step_dir_name(step))      # rank 0, then a barrier (done by the caller)
    save_state(tmp, f"state-rank{rank}", {...})  # any rank: JSON skeleton + safetensors
    write_tensors(tmp, "model.safetensors", sd)  # any rank
    commit(tmp, root / step_dir_name(step), {"step": step, "world_size": ws})  # rank 0, after a barrier
    apply_retention(root, keep_last=3)           # rank 0, after commit

Reading::

    ckpt = find_latest(root)                     # newest complete dir, or None
    manifest = verify(ckpt)                      # sizes + sha256 (check_hashes=False: sizes only)
    model_sd = read_tensors(ckpt, "model.safetensors")
    rng = load_state(ckpt, "state-rank0")

JSON values that JSON cannot say exactly (tuples, int dict keys, inf/nan, numpy arrays, dtypes) are stored
as small tagged objects ``{"__ember__": kind, ...}``; see :func:`flatten_state`. Any failure raises
:class:`CheckpointError`, whose message names the file and the fix. Writers must share a file system
with rank 0 (``commit`` lists and hashes what every rank wrote).
"""

from __future__ import annotations

from ._agree import collective_error, failure_report
from ._codec import flatten_state, unflatten_state
from ._damage import damage_reason, describe_fallback, move_aside_damaged
from ._discovery import apply_retention, find_latest, list_checkpoints, step_dir_name
from ._errors import AbandonedCheckpointError, CheckpointError
from ._read import load_state, read_json, verify
from ._sharded import ShardReader, read_model_weights, save_shards
from ._store import begin, commit, save_state, write_json
from ._tensors import read_tensors, write_tensors

__all__ = [
    "AbandonedCheckpointError",
    "CheckpointError",
    "ShardReader",
    "apply_retention",
    "begin",
    "collective_error",
    "commit",
    "damage_reason",
    "describe_fallback",
    "failure_report",
    "find_latest",
    "flatten_state",
    "list_checkpoints",
    "load_state",
    "move_aside_damaged",
    "read_json",
    "read_model_weights",
    "read_tensors",
    "save_shards",
    "save_state",
    "step_dir_name",
    "unflatten_state",
    "verify",
    "write_json",
    "write_tensors",
]
