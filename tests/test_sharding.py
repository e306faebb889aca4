"""Sharded enumeration: four virtual CPU devices give the single-device results.

A subprocess sets ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before importing jax
(the flag is read once, at backend start), runs :func:`toysim.analyze` on a few instances and
prints the results; this process, with one device, computes the same and compares. Tolerance
1e-12: sharding only changes the order of float64 sums over at most 4**4 terms of order one.
The child also reports how many devices hold the leaf level, so a sharding that silently did
nothing fails the test.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import toysim

TOLERANCE = 1e-12
# Two small shapes: each compiles a partitioned program in the child (~10-15 s on 2 busy cores;
# an MLP policy case took 33 s and was left out -- its levels are sharded by the same code).
CASES = (
    ("tabular", 2, 4, "trigger"),
    ("markov", 4, 2, "deadline"),
)

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
from tests.test_sharding import analyze_case, CASES
out = []
for case in CASES:
    values, n_devices = analyze_case(*case)
    out.append({"values": values, "devices": n_devices})
print(json.dumps({"device_count": jax.device_count(), "cases": out}))
"""


def analyze_case(kind, vocab_size, horizon, harm_kind):
    """``toysim.analyze`` of one fixed instance, as plain lists, and the devices of its leaf level."""
    policy = {
        "tabular": toysim.TabularPolicy(vocab_size, horizon),
        "markov": toysim.MarkovPolicy(vocab_size, horizon, order=1),
        "mlp": toysim.MLPPolicy(vocab_size, horizon, window=1, hidden=4),
    }[kind]
    harm = {
        "trigger": lambda: toysim.trigger_harm(vocab_size, [1]),
        "deadline": lambda: toysim.deadline_harm(vocab_size, [1, 2], 2),
        "graded": lambda: toysim.graded_harm(vocab_size, horizon, [0]),
    }[harm_kind]()
    params = policy.init(jax.random.key(7))
    h = jnp.asarray(toysim.harm_values(harm, vocab_size, horizon))
    result = toysim.analyze(policy, params, h, 1.5)
    values = {
        name: [np.asarray(leaf).tolist() for leaf in jax.tree_util.tree_leaves(getattr(result, name))]
        for name in result._fields
    }
    leaves = toysim.forward(policy, params).log_prefix[-1]
    return values, len(leaves.sharding.device_set)


def test_sharded_enumeration_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env.pop("TOYSIM_SHARDING", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["device_count"] == 4
    assert jax.device_count() == 1
    for case, got in zip(CASES, child["cases"]):
        assert got["devices"] == 4, f"{case}: leaf level not sharded"
        expected, _ = analyze_case(*case)
        for name, value in expected.items():
            a, b = got["values"][name], value
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                err = np.max(np.abs(np.asarray(x, dtype=float) - np.asarray(y, dtype=float)), initial=0.0)
                assert err <= TOLERANCE, f"{case} {name}[{i}]: {err:.3e}"
