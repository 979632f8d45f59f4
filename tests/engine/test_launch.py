"""``segtron.engine.launch``: in-process for one process, spawned gloo workers for several,
torchrun's environment honoured without spawning, failures propagated."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segtron.engine import default_argument_parser, launch
from segtron.engine.launch import _find_free_port, _resolve_dist_url, _share_cpu_threads
from segtron.utils import comm
from segtron.utils.env import available_cpu_cores

from .launch_workers import describe_process


def test_find_free_port_can_be_bound():
    port = _find_free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_jobs_started_together_with_the_default_dist_url_get_different_ports():
    """The second job cannot be given the port the first job's rendezvous listens on."""
    default = default_argument_parser().parse_args([]).dist_url
    first = _resolve_dist_url(default, num_machines=1)
    host, port = first[len("tcp://"):].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first_job_store:
        first_job_store.bind((host, int(port)))
        first_job_store.listen()
        second = _resolve_dist_url(default, num_machines=1)
    assert first != second and second.startswith("tcp://127.0.0.1:")


def test_explicit_dist_url_is_kept_and_auto_needs_one_machine():
    assert _resolve_dist_url("tcp://10.0.0.1:1234", num_machines=2) == "tcp://10.0.0.1:1234"
    assert _resolve_dist_url("tcp://127.0.0.1:1234", num_machines=1) == "tcp://127.0.0.1:1234"
    with pytest.raises(ValueError, match="--dist-url tcp://<IP of machine 0>:<port>"):
        _resolve_dist_url("auto", num_machines=2)


def test_one_process_runs_main_here_without_a_process_group():
    calls = []
    launch(lambda *a: calls.append((os.getpid(), a, dist.is_initialized())), 1,
           args=("x", 2))
    assert calls == [(os.getpid(), ("x", 2), False)]


def test_auto_url_is_refused_for_several_machines():
    with pytest.raises(ValueError, match="--dist-url tcp://"):
        launch(print, 2, num_machines=2, machine_rank=0, dist_url="auto")


def test_bad_machine_rank_and_counts_are_refused():
    with pytest.raises(ValueError, match="machine_rank 2"):
        launch(print, 1, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="at least 1"):
        launch(print, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_nccl_without_cuda_suggests_gloo():
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        launch(print, 2, dist_url="auto", backend="nccl")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="'gloo'"):
        launch(print, 2, dist_url="auto", backend="mpi")


def test_under_torchrun_it_joins_the_group_from_the_environment(monkeypatch, tmp_path):
    """torchrun's variables present: no child process; this process joins via env://, runs
    main, and leaves the group afterwards."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_find_free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not dist.is_initialized()
    # --num-gpus 4 would spawn 4 processes without torchrun; here torchrun decides.
    launch(describe_process, 4, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    info = json.loads((tmp_path / "rank0.json").read_text())
    assert info["pid"] == os.getpid()
    assert info["world_size"] == 1 and info["local_size"] == 1 and info["backend"] == "gloo"
    assert not dist.is_initialized()
    assert comm._LOCAL_PROCESS_GROUP is None


@pytest.mark.slow
def test_two_gloo_processes_and_a_failing_rank(tmp_path, monkeypatch):
    """Two spawned CPU processes form a gloo group (collectives, local ranks) and share the
    cores; rank 1 then raises, and launch raises in the parent with that error."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(mp.ProcessRaisedException, match="deliberate failure on rank 1"):
        launch(describe_process, 2, dist_url="auto", args=(str(tmp_path), 1), backend="gloo")
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert [i["local_rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["local_size"] == 2 for i in infos)
    assert all(i["backend"] == "gloo" and i["all_reduce"] == 3.0 for i in infos)
    assert all(i["gathered"] == [0, 1] for i in infos)
    assert len({i["pid"] for i in infos} | {os.getpid()}) == 3
    assert all(i["threads"] == max(1, available_cpu_cores() // 2) for i in infos)


def test_explicit_omp_num_threads_is_kept_by_cpu_processes(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = torch.get_num_threads()
    _share_cpu_threads(8)
    assert torch.get_num_threads() == before
