"""Must-show 6: multi-node launch over 127.0.0.1, the seed's Accelerate YAML, `ember config`/`env`, torchrun args."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import ember
from ember import EmberConfigError
from ember.cli import _parser
from ember.cli import main as ember_main
from ember.cli.config import LaunchConfig
from ember.cli.launch import free_port, torchrun_args


@pytest.fixture(autouse=True)
def _private_ember_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the real ~/.cache/ember: the default config file lives under the test's tmp_path."""
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "ember-home"))

# The `accelerate_config.yaml` block of ../shared/seed/000_ca0b78e0fe1a1e73.txt (the seed's text lost the
# indentation under fsdp_config; this is the file as Accelerate writes it), with the CPU-sized change:
# FSDP -> MULTI_CPU and 8 -> 2 processes. The fsdp_config section stays and must parse and validate.
SEED_YAML = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
mixed_precision: bf16
num_processes: 2
"""


@pytest.mark.timeout(300)
def test_two_machines_on_localhost_train_together(tmp_path: Path, common: Any, tools: Any) -> None:
    """Two `ember launch --num_machines 2 --machine_rank {0,1}` started at once form one 2-rank job."""
    for attempt in range(2):  # the free port can be taken by another program between choosing and binding it
        port = free_port()
        procs = [
            tools.popen([*tools.EMBER, "launch", "--num_machines", "2", "--num_processes", "2", "--machine_rank",
                         rank, "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--cpu",
                         tools.WORKER, tmp_path, "ddp"])
            for rank in (0, 1)
        ]
        try:
            outputs = [p.communicate(timeout=240)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        port_taken = any("address already in use" in o.lower() or "EADDRINUSE" in o for o in outputs)
        if attempt == 0 and port_taken and any(p.returncode for p in procs):
            continue
        break
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-4000:] for o in outputs)
    (i0, t0), (i1, t1) = tools.read_ranks(tmp_path, 2)
    assert {(i["rank"], i["node_rank"]) for i in (i0, i1)} == {(0, 0), (1, 1)}
    assert all((i["world"], i["torch_world"], i["strategy"]) == (2, 2, "ddp") for i in (i0, i1))
    for k in t0["ddp"]:
        assert torch.equal(t0["ddp"][k], t1["ddp"][k])
    tools.assert_params_close(t0["ddp"], common.reference_params(world=2, accum=1))


def test_seed_yaml_parses_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(SEED_YAML)
    cfg = LaunchConfig.from_file(path)
    assert (cfg.distributed_type, cfg.strategy, cfg.num_processes, cfg.mixed_precision) == ("MULTI_CPU", "ddp", 2, "bf16")
    assert cfg.fsdp_config == {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}
    # the unchanged seed file (FSDP, 8 processes) also parses: FSDP is a known, planned distributed_type
    original = LaunchConfig.from_dict(yaml.safe_load(SEED_YAML.replace("MULTI_CPU", "FSDP").replace(": 2", ": 8")))
    assert (original.distributed_type, original.strategy, original.num_processes) == ("FSDP", "fsdp", 8)


@pytest.mark.timeout(300)
def test_seed_yaml_launches_two_processes_in_bf16(tmp_path: Path, common: Any, tools: Any) -> None:
    cfg = tmp_path / "accelerate_config.yaml"
    cfg.write_text(SEED_YAML)
    out = tmp_path / "out"
    out.mkdir()
    # --cpu only keeps a GPU workstation from asking for 2 GPUs; everything else comes from the YAML
    tools.run([*tools.EMBER, "launch", "--config_file", cfg, "--cpu", tools.WORKER, out, "ddp"], timeout=240)
    (i0, t0), (i1, t1) = tools.read_ranks(out, 2)
    # the YAML's mixed_precision and distributed_type reach the script's Accelerator() through the launcher
    assert all((i["world"], i["strategy"], i["precision"]) == (2, "ddp", "bf16-mixed") for i in (i0, i1))
    for k in t0["ddp"]:
        assert torch.equal(t0["ddp"][k], t1["ddp"][k])
    initial = {k: v.float() for k, v in common.make_model().state_dict().items()}
    assert tools.params_differ(t0["ddp"], initial)  # it trained
    tools.assert_params_close(t0["ddp"], common.reference_params(world=2, accum=1), rtol=0, atol=0.05)  # bf16


def test_unquoted_no_in_yaml_means_no(tmp_path: Path) -> None:
    """YAML reads `NO` and `no` as False; hand-written Accelerate configs use them unquoted."""
    path = tmp_path / "cfg.yaml"
    path.write_text("distributed_type: NO\nmixed_precision: no\nnum_processes: 1\n")
    cfg = LaunchConfig.from_file(path)
    assert (cfg.distributed_type, cfg.strategy, cfg.mixed_precision) == ("NO", "single", "no")


def test_ember_config_writes_a_yaml_that_launch_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cfg.yaml"
    rc = ember_main(["config", "--num_processes", "4", "--num_machines", "2", "--main_process_ip", "10.0.0.1",
                     "--main_process_port", "1234", "--mixed_precision", "bf16", "--gradient_accumulation_steps",
                     "8", "--max_restarts", "2", "--cpu", "--output", str(path)])
    assert rc == 0 and f"wrote {path}" in capsys.readouterr().out
    written = yaml.safe_load(path.read_text())
    assert written["num_processes"] == 4 and written["mixed_precision"] == "bf16" and written["use_cpu"] is True
    seen: list[Any] = []
    monkeypatch.setattr("ember.cli.launch.launch", lambda cfg, script, args: seen.append((cfg, script, args)) or 0)
    assert ember_main(["launch", "--config_file", str(path), "--machine_rank", "1", "train.py", "--lr", "3"]) == 0
    (cfg, script, args), = seen
    assert (script, args) == ("train.py", ["--lr", "3"])
    assert (cfg.num_processes, cfg.num_machines, cfg.machine_rank, cfg.main_process_ip, cfg.main_process_port) == (
        4, 2, 1, "10.0.0.1", 1234)
    assert (cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.max_restarts, cfg.use_cpu) == ("bf16", 8, 2, True)


def test_max_restarts_and_rendezvous_reach_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ember launch` flags become torch.distributed.run arguments that torch's own parser reads correctly."""
    from torch.distributed import run as torchrun

    seen: list[Any] = []
    monkeypatch.setattr("ember.cli.launch.launch", lambda cfg, script, args: seen.append(cfg) or 0)
    assert ember_main(["launch", "--num_processes", "2", "--max_restarts", "3", "--cpu", "train.py"]) == 0
    single = torchrun.get_args_parser().parse_args(torchrun_args(seen[0], "train.py", ["--x", "1"]))
    assert (single.max_restarts, single.nnodes, single.nproc_per_node, single.standalone) == (3, "1", "2", True)
    assert (single.training_script, single.training_script_args) == ("train.py", ["--x", "1"])
    multi = LaunchConfig.from_dict({"num_processes": 4, "num_machines": 2, "machine_rank": 1,
                                    "main_process_ip": "127.0.0.1", "main_process_port": 29511, "max_restarts": 1})
    parsed = torchrun.get_args_parser().parse_args(torchrun_args(multi, "train.py", []))
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.node_rank, parsed.master_addr, parsed.master_port) == (
        "2", "2", 1, "127.0.0.1", 29511)
    assert parsed.max_restarts == 1 and not parsed.standalone


@pytest.mark.timeout(120)
def test_ember_env_prints_versions(tools: Any) -> None:
    out = tools.run([*tools.EMBER, "env"], timeout=60).stdout
    assert f"torch:      {torch.__version__}" in out
    assert f"ember:      {ember.__version__}" in out and "gloo" in out


ENV_SCRIPT = """\
import json, os, sys
rank = os.environ.get("RANK", "0")
keys = ("WORLD_SIZE", "EMBER_MIXED_PRECISION", "EMBER_ACCELERATOR", "EMBER_DYNAMO_CONFIG", "CUDA_VISIBLE_DEVICES")
with open(os.path.join(sys.argv[1], f"env-{rank}.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in keys}, f)
"""


def ember_cli(args: list[Any], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ember ...` as a user runs it, with EMBER_HOME pointing at the test's folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EMBER_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                           "MASTER_ADDR", "MASTER_PORT")}
    env.update(EMBER_HOME=str(home), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ember.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.timeout(240)
def test_ember_config_writes_the_default_config_that_launch_reads(tmp_path: Path) -> None:
    """`ember config ...` then `ember launch script.py` with no flags, as with `accelerate config/launch`."""
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    (tmp_path / "script.py").write_text(ENV_SCRIPT)
    made = ember_cli(["config", "--num_processes", "2", "--cpu", "--mixed_precision", "bf16",
                      "--dynamo_backend", "inductor", "--dynamo_mode", "max-autotune"], home, tmp_path)
    assert f"wrote {home / 'default_config.yaml'}" in made.stdout
    written = yaml.safe_load((home / "default_config.yaml").read_text())
    assert written["num_processes"] == 2 and written["dynamo_config"]["dynamo_backend"] == "inductor"
    ran = ember_cli(["launch", "script.py", out], home, tmp_path)
    assert f"using the default config {home / 'default_config.yaml'}" in ran.stderr
    seen = [json.loads((out / f"env-{r}.json").read_text()) for r in (0, 1)]
    for env in seen:  # the file's settings reached both workers
        assert (env["WORLD_SIZE"], env["EMBER_MIXED_PRECISION"], env["EMBER_ACCELERATOR"]) == ("2", "bf16", "cpu")
        assert json.loads(env["EMBER_DYNAMO_CONFIG"]) == {
            "backend": "inductor", "mode": "max-autotune", "fullgraph": False, "dynamic": None, "regional": False}


@pytest.mark.timeout(240)
def test_gpu_ids_become_the_workers_visible_devices(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "script.py").write_text(ENV_SCRIPT)
    cfg = tmp_path / "accelerate_config.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\ngpu_ids: '0'\n"
                   "ipex_config:\n  ipex: true\n")
    ran = ember_cli(["launch", "--config_file", cfg, "script.py", out], tmp_path / "home", tmp_path)
    assert json.loads((out / "env-0.json").read_text())["CUDA_VISIBLE_DEVICES"] == "0"
    notices = [line for line in ran.stderr.splitlines() if "ipex_config" in line]
    assert len(notices) == 1 and "ignored" in notices[0]  # a one-line notice, not a refusal


def test_unknown_and_misspelt_config_keys(tmp_path: Path) -> None:
    cfg = LaunchConfig.from_dict({"num_processes": 2, "ipex_config": {"ipex": True}, "my_cluster": "a", "debug": False})
    assert len(cfg.notes) == 2 and all(note.endswith("ignored.") for note in cfg.notes)  # debug: false asks nothing
    with pytest.raises(EmberConfigError, match='Did you mean "num_processes"'):
        LaunchConfig.from_dict({"num_proceses": 2})
    with pytest.raises(EmberConfigError, match="gpu_ids"):
        LaunchConfig.from_dict({"gpu_ids": "first"})
    with pytest.raises(EmberConfigError, match='Did you mean "dynamo_mode"'):
        LaunchConfig.from_dict({"dynamo_config": {"dynamo_mdoe": "default"}})
    assert LaunchConfig.from_dict({"dynamo_config": {"backend": "NO"}}).dynamo_env() is None
    assert LaunchConfig.from_dict({"gpu_ids": [0, 1]}).gpu_ids == "0,1"


def test_every_launch_and_config_flag_has_help_text() -> None:
    parser = _parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("launch", "config"):
        actions = [a for a in subcommands.choices[name]._actions if a.dest != "help"]
        assert len(actions) > 10
        assert [a.dest for a in actions if not a.help] == [], name


def test_launch_reads_strategy_names_from_the_registry() -> None:
    """`strategy_name` (flag or YAML key) takes any registered name; a wrong one lists the registry's names."""
    from ember import EmberConfigError
    from ember.strategies import strategy_names

    cfg = LaunchConfig.from_dict({"distributed_type": "MULTI_CPU", "num_processes": 2,
                                  "strategy_name": "deepspeed_stage_2"})
    assert cfg.strategy == "deepspeed_stage_2"
    with pytest.raises(EmberConfigError) as err:
        LaunchConfig.from_dict({"num_processes": 2, "strategy_name": "fsdpp"})
    assert 'Did you mean "fsdp"?' in str(err.value)
    assert all(f'"{name}"' in str(err.value) for name in strategy_names())
