"""The persistent caches are on for every subcommand, not only ``check``/``reproduce``.

``toysim exact`` runs in subprocesses with ``XDG_CACHE_HOME`` in a temporary folder: the first run
stores its compiled programs under ``toysim/jax`` (JAX's compilation cache) and
``toysim/executables`` (toysim's executable cache), the second finds them all (adds none) and
prints the same bytes, and with ``TOYSIM_NO_JAX_CACHE=1`` nothing is stored.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 1.0,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, 0.4],
        "transition_logits": [[0.3, -0.2], [1.0, 0.0]],
    },
    "harm": {"kind": "trigger", "trigger_tokens": [1]},
}


def test_every_subcommand_uses_the_persistent_compilation_cache(tmp_path):
    """``toysim exact`` (not only check/reproduce) stores its programs; a second run adds none;
    ``TOYSIM_NO_JAX_CACHE=1`` stores nothing."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))

    def run(cache_home, **extra):
        drop = ("TOYSIM_NO_JAX_CACHE", "TOYSIM_NO_EXECUTABLE_CACHE", "JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update({"XDG_CACHE_HOME": str(cache_home), "JAX_PLATFORMS": "cpu", **extra})
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run(
            [sys.executable, "-m", "toysim", "exact", "tiny.json", "--compact"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        listed = []
        for name in ("jax", "executables"):
            folder = cache_home / "toysim" / name
            listed.append(sorted(os.listdir(folder)) if folder.exists() else None)
        return proc.stdout, listed

    cold_out, cold = run(tmp_path / "cache")
    warm_out, warm = run(tmp_path / "cache")
    assert cold[0] and cold[1] and warm == cold and warm_out == cold_out
    off_out, off = run(tmp_path / "off", TOYSIM_NO_JAX_CACHE="1")
    assert off == [None, None] and off_out == cold_out
