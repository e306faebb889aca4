"""``toysim sweep`` in subprocesses: killed and resumed, four virtual devices, two JAX processes.

* A sweep process is killed (SIGKILL) once its first chunk is on disk; the rerun completes it, and
  the table equals, byte for byte, the table of an uninterrupted run (no row lost or repeated).
* With ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before jax is imported) the
  batch is sharded over four CPU devices; the rows equal this process's one-device rows to 1e-12
  and the child reports that the batch was held by four devices.
* Two processes joined by ``jax.distributed`` on 127.0.0.1 each run their share of the chunks;
  process 0 merges the parts into the table of a one-process run.

The children run without the persistent compilation cache (``TOYSIM_NO_JAX_CACHE=1``): a warm
cache would make the killed run finish before it is killed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import toysim
from tests.test_sweep import table as rows_of
from tests.test_sweep import write_spec

TOLERANCE = 1e-12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TOYSIM_SHARDING")}
    env.update({"TOYSIM_NO_JAX_CACHE": "1", "JAX_PLATFORMS": "cpu", **extra})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


# two horizons: two shapes, each one chunk that compiles its own program (about a second each): the
# process is killed while it compiles the second
KILL_SPEC = {
    "family": {
        "policy": {"kind": "markov"},
        "vocab_size": 2,
        "horizon": 2,
        "harm": {"kind": "trigger", "trigger_tokens": [1]},
    },
    "grid": {"horizon": [2, 3], "lambda": [0.5, 2.0], "seed": [0, 1]},
    "quantities": ["expected_harm", "equilibrium_kl", "harm_information"],
    "engine": "dp",
    "chunk_size": 4,
    "output": "killed.csv",
}


def test_killed_sweep_resumes_to_the_uninterrupted_table(tmp_path):
    path = write_spec(tmp_path, KILL_SPEC)
    out = tmp_path / "killed.csv"
    cmd = [sys.executable, "-m", "toysim", "sweep", path]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1 + 4:  # header and the first chunk
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, partial = rows_of(out)
    assert len(partial) == 4, len(partial)

    rerun = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - len(partial)} instances computed, {len(partial)} already there" in rerun.stdout

    whole = write_spec(tmp_path, {**KILL_SPEC, "output": "whole.csv"}, "whole.json")
    toysim.sweep(whole, progress=False)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    _, rows = rows_of(out)
    assert sorted(int(r[0]) for r in rows) == list(range(8))


DEVICE_SPEC = {
    "family": {
        "policy": {"kind": "tabular"},
        "vocab_size": 2,
        "horizon": 3,
        "harm": {"kind": "graded", "harmful_tokens": [1]},
    },
    "grid": {"lambda": [0.5, 1.0, 2.0], "seed": [0, 1, 2]},
    "quantities": [
        "expected_harm",
        "harm_variance",
        "gradient_norm_by_position",
        "equilibrium_kl_by_position",
    ],
    "engine": "enumerate",
    "chunk_size": 20,
    "output": "four.csv",
}

DEVICE_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import toysim
from toysim import _sweep
# 3 at a time in each device's share of 5 (a chunk of 20 on 4 devices): a sub-batch and a remainder
_sweep.sub_batch = lambda per_instance, per_device: min(3, per_device)
result = toysim.sweep(sys.argv[1], progress=False)
print(json.dumps({"device_count": jax.local_device_count(), "devices": result.devices}))
"""


def test_four_virtual_devices_give_the_one_device_rows(tmp_path):
    path = write_spec(tmp_path, DEVICE_SPEC)
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, path],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child == {"device_count": 4, "devices": 4}
    header, four = rows_of(tmp_path / "four.csv")

    import jax

    assert jax.local_device_count() == 1
    one = write_spec(tmp_path, {**DEVICE_SPEC, "output": "one.csv"}, "one.json")
    toysim.sweep(one, progress=False)
    header1, single = rows_of(tmp_path / "one.csv")
    assert header1 == header and len(single) == len(four) == 9
    first = header.index("engine") + 1
    for a, b in zip(sorted(four, key=lambda r: int(r[0])), sorted(single, key=lambda r: int(r[0]))):
        assert a[:first] == b[:first] and a[-1] == b[-1]  # parameters and spec digest
        diff = np.abs(np.array(a[first:-1], dtype=float) - np.array(b[first:-1], dtype=float))
        assert diff.max() <= TOLERANCE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_jax_processes_share_the_chunks_and_merge(tmp_path):
    spec = {**KILL_SPEC, "output": "two.csv"}
    path = write_spec(tmp_path, spec)
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "toysim", "sweep", path, "--merge-timeout", "120"],
            cwd=tmp_path,
            env=child_env(TOYSIM_COORDINATOR=address, TOYSIM_NUM_PROCESSES="2", TOYSIM_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert "table:" in outs[0][0] and "table:" not in outs[1][0]
    for i in (0, 1):  # chunk k (4 instances, two shapes) went to process k mod 2
        _, part = rows_of(tmp_path / f"two.part{i}of2.csv")
        assert sorted(int(r[0]) for r in part) == list(range(4 * i, 4 * i + 4))
    single = write_spec(tmp_path, {**spec, "output": "single.csv"}, "single.json")
    toysim.sweep(single, progress=False)
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
