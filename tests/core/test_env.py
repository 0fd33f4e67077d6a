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
    assert info == ProcessInfo(rank=2, world_size=4, local_rank=0, local_world_size=2, node_rank=1, source="slurm")
    assert ProcessInfo.from_env(env).local_world_size == 4  # variable absent: all tasks counted as local


def test_no_launcher_means_one_process() -> None:
    assert ProcessInfo.from_env({}) == ProcessInfo()
    assert ProcessInfo.from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).world_size == 1  # `srun -n1`: single
