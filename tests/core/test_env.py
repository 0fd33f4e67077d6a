"""Process facts are read from the launcher's environment in one place (torchrun / ember launch / SLURM)."""

from __future__ import annotations

from ember import ProcessInfo


def test_torchrun_variables() -> None:
    info = ProcessInfo.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                 "GROUP_RANK": "1"})
    assert info == ProcessInfo(rank=3, world_size=4, local_rank=1, local_world_size=2, node_rank=1, source="torchrun")


def test_slurm_variables_with_and_without_tasks_per_node() -> None:
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}
    info = ProcessInfo.from_env({**env, "SLURM_NTASKS_PER_NODE": "2(x2)"})
    assert info == ProcessInfo(rank=2, world_size=4, local_rank=0, local_world_size=2, node_rank=1, source="slurm",
                               master_addr="127.0.0.1", master_port=15000)
    assert ProcessInfo.from_env(env).local_world_size == 4  # variable absent: all tasks counted as local


def test_no_launcher_means_one_process() -> None:
    assert ProcessInfo.from_env({}) == ProcessInfo()
    assert ProcessInfo.from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).world_size == 1  # `srun -n1`: single


def test_slurm_rendezvous_is_derived_from_the_job() -> None:
    """`srun python train.py` sets no MASTER_ADDR: the first host of the node list and a port from the job id."""
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_NODELIST": "gpu-a[017-018,020],gpu-b3",
           "SLURM_JOB_ID": "1234567"}
    info = ProcessInfo.from_env(env)
    assert (info.master_addr, info.master_port) == ("gpu-a017", 15000 + 4567)
    info = ProcessInfo.from_env({**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})  # explicit values win
    assert (info.master_addr, info.master_port) == ("10.0.0.1", 29400)


def test_launch_settings_are_read_in_one_place() -> None:
    from ember._env import LaunchSettings

    got = LaunchSettings.from_env({"EMBER_MIXED_PRECISION": "bf16", "EMBER_STRATEGY": "ddp",
                                   "EMBER_DYNAMO_CONFIG": '{"dynamo_backend": "INDUCTOR"}'})
    assert (got.mixed_precision, got.strategy, got.dynamo_config) == ("bf16", "ddp", {"dynamo_backend": "INDUCTOR"})
    assert LaunchSettings.from_env({}) == LaunchSettings()


def test_no_ember_variable_is_read_outside_the_env_module() -> None:
    import re
    from pathlib import Path

    import ember

    root = Path(ember.__file__).parent
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.name != "_env.py" and re.search(r"environ\.get\([\"']EMBER_|getenv\([\"']EMBER_|"
                                                    r"environ\[[\"']EMBER_\w+[\"']\](?!\s*=)", p.read_text())]
    assert readers == []
