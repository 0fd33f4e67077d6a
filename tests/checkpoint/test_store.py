"""The checkpoint directory: atomic commit, manifest, verify, refusal of pickles, full disks, crashes,
discovery and retention."""

from __future__ import annotations

import doctest
import errno
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ember
import ember.checkpoint as ckpt
from ember.checkpoint import (
    CheckpointError,
    _discovery,
    _fsio,
    _read,
    _store,
    _tensors,
    apply_retention,
    begin,
    commit,
    find_latest,
    list_checkpoints,
    load_state,
    read_json,
    read_tensors,
    save_state,
    step_dir_name,
    verify,
    write_json,
    write_tensors,
)


def save(root: Path, step: int, *, tag: str = "", update_latest: bool = True) -> Path:
    """A small but complete checkpoint: model tensors, optimizer state, per-rank JSON."""
    final = root / step_dir_name(step)
    tmp = begin(final)
    torch.manual_seed(step)
    write_tensors(
        tmp, "model.safetensors", {"w": torch.randn(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    )
    save_state(tmp, "optimizer", {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": []})
    write_json(tmp, "state-rank0.json", {"step": step, "tag": tag})
    return commit(tmp, final, {"step": step, "world_size": 1}, update_latest=update_latest)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def tag_of(path: Path) -> str:
    return str(read_json(path, "state-rank0.json")["tag"])


# ------------------------------------------------------------------------------------------ writing


def test_commit_layout_manifest_and_latest(tmp_path: Path) -> None:
    final = tmp_path / "ckpts" / step_dir_name(120)
    tmp = begin(final)
    assert tmp == final.parent / ".tmp-step-00000120" and tmp.is_dir()
    write_tensors(tmp, "model/shard-0.safetensors", {"w": torch.ones(2)})
    (tmp / "model" / "external.bin").write_bytes(b"written by someone else")  # e.g. torch DCP
    write_json(tmp, "trainer.json", {"callbacks": {"a": 1}})
    assert not final.exists()  # nothing visible before commit

    meta = {"step": 120, "epoch": 3, "world_size": 2, "strategy": "ddp", "precision": "bf16-mixed"}
    assert commit(tmp, final, meta) == final
    assert not tmp.exists() and leftovers(final.parent) == []
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["ember_version"] == ember.__version__
    assert {k: manifest[k] for k in meta} == meta
    on_disk = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [n for n in on_disk if n != "manifest.json"]
    assert sorted(manifest["files"]) == ["README.md", "model/external.bin", "model/shard-0.safetensors",
                                         "trainer.json"]
    for name, entry in manifest["files"].items():
        data = (final / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (final.parent / "latest").read_text().strip() == "step-00000120"
    assert verify(final) == manifest
    assert find_latest(final.parent) == final


def test_begin_removes_a_stale_temporary_dir(tmp_path: Path) -> None:
    stale = begin(tmp_path / "step-00000001")
    (stale / "junk.bin").write_bytes(b"x" * 10)
    tmp = begin(tmp_path / "step-00000001")
    assert tmp == stale and list(tmp.iterdir()) == []


def test_write_tensors_is_plain_safetensors_with_views_and_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "base": base,
        "row": base[1],
        "t": base.t(),
        "bf16": torch.randn(5, 2).to(torch.bfloat16),
        "i64": torch.arange(3),
        "flag": torch.tensor(True),
        "empty": torch.empty(0, 2),
    }
    tmp = begin(tmp_path / "step-00000001")
    write_tensors(tmp, "model.safetensors", tensors, metadata={"note": "hi"})
    loaded = load_file(tmp / "model.safetensors")  # the reference reader agrees byte for byte
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    with safe_open(tmp / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "hi"}


def test_write_tensors_rejects_what_safetensors_cannot_hold(tmp_path: Path) -> None:
    tmp = begin(tmp_path / "step-00000001")
    with pytest.raises(CheckpointError, match=r"'z'.*complex128"):
        write_tensors(tmp, "a.safetensors", {"z": torch.zeros(2, dtype=torch.complex128)})
    with pytest.raises(CheckpointError, match="__metadata__"):
        write_tensors(tmp, "a.safetensors", {"__metadata__": torch.zeros(2)})
    assert not (tmp / "a.safetensors").exists()


@pytest.mark.parametrize(
    "name", ["../escape.json", "/abs.json", "a/../b.json", "", "manifest.json", ".ember-digests/x"]
)
def test_bad_file_names_are_refused(tmp_path: Path, name: str) -> None:
    tmp = begin(tmp_path / "step-00000001")
    with pytest.raises(CheckpointError, match=r"manifest|invalid file name|reserved"):
        write_json(tmp, name, {})
    assert not (tmp_path / "escape.json").exists()


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({"a": (1, 2)}, "['a']"),
        ({"a": float("nan")}, "['a']"),
        ({"a": {1: 2}}, "['a']"),
        ([torch.ones(1)], "[0]"),
    ],
)
def test_write_json_accepts_only_exact_json(tmp_path: Path, obj: Any, where: str) -> None:
    tmp = begin(tmp_path / "step-00000001")
    with pytest.raises(CheckpointError, match="save_state") as info:
        write_json(tmp, "x.json", obj)
    assert f"x.json content{where}" in str(info.value)


def test_save_state_without_tensors_writes_only_json(tmp_path: Path) -> None:
    tmp = begin(tmp_path / "step-00000001")
    save_state(tmp, "state-rank1", {"step": 3, "sampler": {"epoch": 1, "index": (4, 5)}})
    assert sorted(p.name for p in tmp.iterdir() if not p.name.startswith(".")) == ["state-rank1.json"]
    assert load_state(tmp, "state-rank1") == {"step": 3, "sampler": {"epoch": 1, "index": (4, 5)}}


def test_commit_refuses_bad_meta_and_cleans_up(tmp_path: Path) -> None:
    previous = save(tmp_path, 1)
    metas: list[dict[str, Any]] = [{"files": []}, {"mesh": (2, 2)}]
    for meta in metas:
        tmp = begin(tmp_path / step_dir_name(2))
        write_json(tmp, "x.json", {})
        with pytest.raises(CheckpointError, match=r"commit\(meta"):
            commit(tmp, tmp_path / step_dir_name(2), meta)
        assert not tmp.exists()
    with pytest.raises(CheckpointError, match="begin"):
        commit(tmp_path / ".tmp-step-00000002", tmp_path / step_dir_name(2), {})
    assert find_latest(tmp_path) == previous and verify(previous)


def test_commit_refuses_symlinks(tmp_path: Path) -> None:
    tmp = begin(tmp_path / step_dir_name(1))
    (tmp / "link").symlink_to(tmp_path)
    with pytest.raises(CheckpointError, match="symlink"):
        commit(tmp, tmp_path / step_dir_name(1), {})
    assert not tmp.exists() and find_latest(tmp_path) is None


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "move-aside"])
def test_overwrite_keeps_exactly_one_valid_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(_store, "rename_exchange", lambda a, b: False)
    save(tmp_path, 5, tag="old")
    final = save(tmp_path, 5, tag="new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]
    assert tag_of(final) == "new" and verify(final)["step"] == 5


def test_update_latest_false_leaves_the_pointer(tmp_path: Path) -> None:
    first = save(tmp_path, 1)
    save(tmp_path, 2, update_latest=False)
    assert (tmp_path / "latest").read_text().strip() == first.name


# ------------------------------------------------------------------------------------------ reading


def test_verify_reports_truncation_flipped_byte_and_missing_file(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    model = path / "model.safetensors"
    original = model.read_bytes()

    model.write_bytes(original[:-5])
    with pytest.raises(CheckpointError, match="corrupted or truncated") as info:
        verify(path, check_hashes=False)
    assert str(model) in str(info.value)

    flipped = bytearray(original)
    flipped[-3] ^= 0xFF
    model.write_bytes(bytes(flipped))
    assert verify(path, check_hashes=False)["step"] == 1  # cheap mode: sizes only
    with pytest.raises(CheckpointError, match=r"sha256.*corrupted or truncated") as info:
        verify(path)
    assert str(model) in str(info.value)

    model.unlink()
    with pytest.raises(CheckpointError, match=r"missing.*corrupted or truncated") as info:
        verify(path, check_hashes=False)
    assert str(model) in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "missing"),
        (b"{not json", "not readable JSON"),
        (b'{"format_version": 1}', "not a valid ember manifest"),
    ],
)
def test_verify_reports_a_bad_manifest(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = save(tmp_path, 1)
    manifest = path / "manifest.json"
    manifest.unlink()
    if content is not None:
        manifest.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        verify(path)
    assert str(manifest) in str(info.value)


def test_verify_asks_for_an_upgrade_on_a_newer_format(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(CheckpointError, match="upgrade ember"):
        verify(path)


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "optimizer.json"])
def test_pickle_payloads_are_refused_without_running(tmp_path: Path, victim: str) -> None:
    path = save(tmp_path, 1)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    pickle.loads(payload)  # the payload really does run code when unpickled...
    assert marker.exists()
    marker.unlink()

    (path / victim).write_bytes(payload)
    with pytest.raises(CheckpointError) as info:
        if victim == "model.safetensors":
            read_tensors(path, victim)
        else:
            load_state(path, "optimizer")
    assert str(path / victim) in str(info.value)
    with pytest.raises(CheckpointError, match=victim):
        verify(path)
    assert not marker.exists()  # ...but ember never ran it


def test_garbage_tensor_files_are_checkpoint_errors(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    model = path / "model.safetensors"
    good = model.read_bytes()
    for bad in (b"", b"\x01", good[:20], good[:-4], b"\xff" * 64):
        model.write_bytes(bad)
        with pytest.raises(CheckpointError, match=r"model.safetensors"):
            read_tensors(path, "model.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_tensors(path, "nope.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(path, "nope")


def test_load_state_refuses_a_foreign_json(tmp_path: Path) -> None:
    tmp = begin(tmp_path / step_dir_name(1))
    write_json(tmp, "optimizer.json", {"state": {}})
    with pytest.raises(CheckpointError, match="not an ember state file"):
        load_state(tmp, "optimizer")


# ---------------------------------------------------------------------------------------- full disk


def _enospc(fd: int, data: memoryview) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["tensors", "json", "state", "manifest"])
def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    previous = save(tmp_path, 1)
    final = tmp_path / step_dir_name(2)
    tmp = begin(final)
    write_json(tmp, "ok.json", {"a": 1})
    monkeypatch.setattr(_fsio, "_write_all", _enospc)
    with pytest.raises(CheckpointError) as info:
        if writer == "tensors":
            write_tensors(tmp, "model.safetensors", {"w": torch.ones(1000)})
        elif writer == "json":
            write_json(tmp, "trainer.json", {"x": 1})
        elif writer == "state":
            save_state(tmp, "optimizer", {"m": torch.ones(3)})
        else:
            commit(tmp, final, {"step": 2})
    message = str(info.value)
    assert "disk is full" in message and "previous checkpoint is untouched" in message
    assert str(tmp) in message
    assert not tmp.exists() and not final.exists()
    monkeypatch.undo()
    assert find_latest(tmp_path) == previous and verify(previous)["step"] == 1
    assert save(tmp_path, 2) == final  # once space is back, saving works again


def test_a_write_after_the_temporary_dir_was_abandoned_says_so(tmp_path: Path) -> None:
    tmp = begin(tmp_path / step_dir_name(1))
    os.rmdir(tmp)
    with pytest.raises(CheckpointError, match="begin"):
        write_json(tmp, "a/b.json", {})
    assert not tmp.exists()  # never silently re-created


# ------------------------------------------------------------------------------------------ crashes


class _Crash(Exception):
    """A simulated power cut: raised at the chosen step and by every step after it."""


class Crasher:
    """Counts the file system steps of a commit and 'dies' at step ``at`` (1-based).

    ``hard`` simulates a killed process: once dead, every later step (cleanup included) raises too, and
    a tree removal that dies leaves its directory half deleted. Otherwise only the one step raises
    OSError and cleanup code runs normally.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int, *, hard: bool, exchange: bool) -> None:
        self.at, self.hard, self.calls, self.dead = at, hard, 0, False
        exchange_impl = _fsio.rename_exchange if exchange else (lambda a, b: False)
        for module, attr, impl in [
            (os, "rename", os.rename),
            (os, "replace", os.replace),
            (_store, "rename_exchange", exchange_impl),
            (_store, "fsync_dir", _fsio.fsync_dir),
            (_fsio, "fsync_dir", _fsio.fsync_dir),
            (_store, "write_member", _fsio.write_member),
            (_store, "_fsync_tree", _store._fsync_tree),
            (_store, "remove_tree", _fsio.remove_tree),
            (_fsio, "remove_tree", _fsio.remove_tree),
        ]:
            monkeypatch.setattr(module, attr, self._wrap(impl, attr))

    def _wrap(self, impl: Callable[..., Any], attr: str) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if self.dead and self.hard:
                raise _Crash(f"dead before {attr}")
            if attr == "remove_tree" and not self.hard:
                return impl(*args, **kwargs)  # cleanup swallows its own errors; only a crash stops it
            self.calls += 1
            if self.calls == self.at:
                self.dead = True
                if attr == "remove_tree" and self.hard and Path(args[0]).is_dir():
                    victims = sorted(p for p in Path(args[0]).rglob("*") if p.is_file())
                    victims[-1].unlink()  # half deleted: the manifest may survive a file it lists
                raise _Crash(f"crash at {attr}") if self.hard else OSError(errno.EIO, f"injected at {attr}")
            return impl(*args, **kwargs)

        return step


def _scenarios() -> Iterator[tuple[str, bool, bool]]:
    for kind in ("new-step", "overwrite"):
        for hard in (False, True):
            for exchange in (True, False):
                if kind == "new-step" and not exchange:
                    continue
                yield kind, hard, exchange


@pytest.mark.parametrize(("kind", "hard", "exchange"), list(_scenarios()))
def test_a_crash_at_any_step_of_commit_never_exposes_a_bad_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, hard: bool, exchange: bool
) -> None:
    step = 2 if kind == "new-step" else 1
    at = 1
    while True:
        root = tmp_path / f"run{at}"
        save(root, 1, tag="old")
        final = root / step_dir_name(step)
        tmp = begin(final)
        write_json(tmp, "state-rank0.json", {"step": step, "tag": "new"})
        write_tensors(tmp, "model.safetensors", {"w": torch.full((3,), float(at))})
        with monkeypatch.context() as patch:
            crasher = Crasher(patch, at, hard=hard, exchange=exchange)
            try:
                commit(tmp, final, {"step": step})
                crashed = False
            except (_Crash, CheckpointError):
                crashed = True
        assert crashed == crasher.dead

        # "Restart": whatever find_latest returns is complete and fully verifies, old or new.
        latest = find_latest(root)
        assert latest is not None, f"crash at step {at} lost every checkpoint"
        verify(latest)
        assert tag_of(latest) in ("old", "new")
        for path in list_checkpoints(root):
            if path != latest:
                verify(path, check_hashes=False)
        if not crashed:
            assert tag_of(latest) == "new" and latest == final and leftovers(root) == []
            break
        if not hard:
            assert not tmp.exists()
            assert leftovers(root) == []

        # The run goes on: the next save and retention leave a clean, valid root.
        save(root, 3, tag="after")
        apply_retention(root, keep_last=1)
        assert leftovers(root) == []
        assert [p.name for p in list_checkpoints(root)] == ["step-00000003"]
        assert find_latest(root) == root / "step-00000003" and verify(root / "step-00000003")
        at += 1
    assert at > 3  # the loop really visited several crash points


def test_find_latest_recovers_a_checkpoint_orphaned_by_a_move_aside(tmp_path: Path) -> None:
    good = save(tmp_path, 4, tag="old")
    os.rename(good, tmp_path / ".old-step-00000004")  # died between the two renames of a replace
    found = find_latest(tmp_path)
    assert found == tmp_path / ".old-step-00000004" and tag_of(found) == "old"
    apply_retention(root=tmp_path, keep_last=None)  # the writer side puts it back
    assert list_checkpoints(tmp_path) == [good] and find_latest(tmp_path) == good


# ------------------------------------------------------------------------------ discovery, retention


def test_list_checkpoints_sorts_by_step_and_ignores_the_rest(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "missing") == []
    for step in (10, 2, 100_000_000):
        save(tmp_path, step)
    (tmp_path / ".tmp-step-00000011").mkdir()
    (tmp_path / ".old-step-00000012").mkdir()
    (tmp_path / "step-00000013").mkdir()  # no manifest: never committed
    (tmp_path / "step-12").mkdir()
    (tmp_path / "step-00000014").write_text("a file")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000002",
        "step-00000010",
        "step-100000000",
    ]


def test_find_latest_skips_incomplete_dirs_and_dangling_pointers(tmp_path: Path) -> None:
    assert find_latest(tmp_path) is None
    assert find_latest(tmp_path / "missing") is None
    save(tmp_path, 1)
    second = save(tmp_path, 2)
    third = save(tmp_path, 3)
    (third / "model.safetensors").write_bytes(b"short")  # newest is broken (and the pointer names it)
    assert find_latest(tmp_path) == second
    (tmp_path / "latest").write_text("step-00000009\n")  # dangling
    assert find_latest(tmp_path) == second
    (tmp_path / "latest").write_text("../../etc\n")  # nonsense
    assert find_latest(tmp_path) == second
    (tmp_path / "latest").unlink()
    assert find_latest(tmp_path) == second
    (second / "manifest.json").unlink()
    assert find_latest(tmp_path) == tmp_path / step_dir_name(1)


def test_find_latest_prefers_a_newer_complete_checkpoint_over_a_lagging_pointer(tmp_path: Path) -> None:
    """A crash between a commit and the pointer update: the newest complete checkpoint wins."""
    save(tmp_path, 1)
    second = save(tmp_path, 2, update_latest=False)
    assert find_latest(tmp_path) == second
    (second / "manifest.json").write_text("{")  # the newer one broken: the pointer's target is used again
    assert find_latest(tmp_path) == tmp_path / "step-00000001"


def test_find_latest_orders_template_named_dirs_by_their_manifest_step(tmp_path: Path) -> None:
    a = save(tmp_path, 3)
    b = a.rename(tmp_path / "epoch=0-step=3")
    c = save(tmp_path, 7).rename(tmp_path / "epoch=1-step=7")
    (tmp_path / "latest").write_text(b.name)
    assert find_latest(tmp_path) == c


def test_retention_keeps_the_newest_and_cleans_leftovers(tmp_path: Path) -> None:
    paths = [save(tmp_path, step) for step in (1, 2, 3)]
    (tmp_path / ".tmp-step-00000004").mkdir()
    (tmp_path / ".old-step-00000003").mkdir()
    (tmp_path / ".del-step-00000000").mkdir()
    deleted = apply_retention(tmp_path, keep_last=1)
    assert deleted == paths[:2]
    assert list_checkpoints(tmp_path) == paths[2:] and leftovers(tmp_path) == []
    assert find_latest(tmp_path) == paths[2]


def test_retention_never_deletes_the_pointer_target_or_protected_dirs(tmp_path: Path) -> None:
    first = save(tmp_path, 1)
    second = save(tmp_path, 2, update_latest=False)
    third = save(tmp_path, 3, update_latest=False)
    fourth = save(tmp_path, 4, update_latest=False)
    assert apply_retention(tmp_path, keep_last=1, protect=[second]) == [third]
    assert list_checkpoints(tmp_path) == [first, second, fourth]
    assert apply_retention(tmp_path, keep_last=0) == [second, fourth]
    assert list_checkpoints(tmp_path) == [first] and find_latest(tmp_path) == first


def test_retention_arguments(tmp_path: Path) -> None:
    paths = [save(tmp_path, step) for step in (1, 2)]
    assert apply_retention(tmp_path, keep_last=None) == [] and list_checkpoints(tmp_path) == paths
    assert apply_retention(tmp_path / "missing", keep_last=1) == []
    with pytest.raises(ValueError, match="keep_last"):
        apply_retention(tmp_path, keep_last=-1)
    with pytest.raises(ValueError, match="step"):
        step_dir_name(-1)


def test_public_api_and_docstring_examples() -> None:
    assert sorted(ckpt.__all__) == sorted(
        [
            "AbandonedCheckpointError", "CheckpointError", "apply_retention", "begin", "collective_error", "commit",
            "damage_reason", "describe_fallback", "failure_report", "find_latest", "flatten_state",
            "list_checkpoints", "load_state", "move_aside_damaged", "read_json", "read_tensors", "save_state",
            "step_dir_name", "unflatten_state", "verify", "write_json", "write_tensors", "ShardReader", "save_shards", "read_model_weights",
        ]
    )  # fmt: skip
    assert issubclass(CheckpointError, RuntimeError)
    for name in ckpt.__all__:
        assert getattr(ckpt, name).__doc__, name
    for module in (ckpt._codec, _tensors, _store, _read, _discovery):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
