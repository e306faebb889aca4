"""The ``toysim`` command line.

Every subcommand turns a ``ValueError`` (bad input, an enumeration too large for memory) into one
line on stderr and exit code 2; argument errors do the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


class UsageError(ValueError):
    """A command-line argument is invalid."""


# The largest seed: jax.random.key reads it as a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def seed_arg(text: str) -> int:
    """``--seed``: an integer in ``[0, 2**63 − 1]`` (argparse type shared by every subcommand)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        shown = text if len(text) <= 30 else text[:27] + "..."
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {shown}")
    return value


def out_dir_arg(text: str) -> str:
    """``--out DIR``: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty path")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _enable_float64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk between runs, for every subcommand.

    Most of a short run is tracing and compiling a handful of programs. JAX's persistent cache
    stores XLA's compilations under ``$XDG_CACHE_HOME/toysim/jax`` (``~/.cache/toysim/jax``) unless
    ``JAX_COMPILATION_CACHE_DIR`` already names a folder, and toysim's executable cache
    (:mod:`toysim._aot`) stores the largest programs whole, traced and compiled, under
    ``$XDG_CACHE_HOME/toysim/executables``. Set ``TOYSIM_NO_JAX_CACHE=1`` to disable both, or
    ``TOYSIM_NO_EXECUTABLE_CACHE=1`` for the second only. A folder that cannot be created leaves
    its cache off (slower, still correct).
    """
    import os

    import jax

    from . import _aot

    if os.environ.get("TOYSIM_NO_JAX_CACHE"):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.environ.get("TOYSIM_NO_EXECUTABLE_CACHE"):
        _aot.enable(os.path.join(base, "toysim", "executables"))
    if jax.config.jax_compilation_cache_dir:
        return
    folder = os.path.join(base, "toysim", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _cmd_exact(args) -> int:
    from ._instance import load
    from ._reports import exact_report

    instance = load(args.instance)
    write_json(exact_report(instance, engine=args.engine), args.compact)
    return 0


def uncertified_exit(failed: list[str]) -> int:
    """Exit status of a command whose trained results must certify themselves: 0, or 1 after one
    line on stderr naming every run in ``failed`` (shared by ``deep`` and ``objectives``)."""
    if not failed:
        return 0
    print(f"toysim: did not converge: {'; '.join(failed)} (try --steps)", file=sys.stderr)
    return 1


def write_json(report: dict, compact: bool = False) -> None:
    """Print a report as JSON on stdout (NaN and infinity refused), shared by every subcommand."""
    json.dump(report, sys.stdout, indent=None if compact else 1, allow_nan=False)
    sys.stdout.write("\n")


def _add_exact(sub) -> None:
    p = sub.add_parser(
        "exact",
        help="exact analysis of one instance file (JSON report on stdout)",
        description="Compute E[h], Var(h), I_t, G_t (covariance form and autodiff), the horizon "
        "distribution and the equilibrium KL profile of a toysim.instance/1 file, in float64.",
    )
    p.add_argument("instance", help="path to a toysim.instance/1 JSON file")
    p.add_argument("--engine", default="auto", choices=["auto", "enumerate", "dp"], help="exact engine")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    p.set_defaults(func=_cmd_exact)


# Every subcommand, in the order of ``toysim --help``: the names a registrar adds, and the registrar,
# either a function of this module or the module whose ``register(subparsers)`` adds them. A module
# is imported only when the parser is built and keeps its heavy imports (jax, proofs_check, figures)
# inside its command functions. tests/test_cli_table.py checks that every ``toysim/_cli_*.py`` is
# listed here and that each registrar adds exactly the names listed.
SUBCOMMANDS: tuple[tuple[tuple[str, ...], Callable | str], ...] = (
    (("exact",), _add_exact),
    (("check", "reproduce"), "toysim._cli_check"),
    (("demo",), "toysim._cli_demo"),
    (("figures",), "toysim._cli_figures"),
    (("deep",), "toysim._cli_recovery"),
    (("train", "sample-vs-exact"), "toysim._cli_train"),
    (("objectives",), "toysim._cli_objectives"),
    (("sweep",), "toysim._cli_sweep"),
)


def registrar(entry: Callable | str) -> Callable:
    """The ``register(subparsers)`` function of a :data:`SUBCOMMANDS` entry (its module imported)."""
    if callable(entry):
        return entry
    import importlib

    return importlib.import_module(entry).register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="toysim", description="Exact simulator for the theory of shallow alignment.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for _, entry in SUBCOMMANDS:
        registrar(entry)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``toysim`` console script."""
    try:
        args = build_parser().parse_args(argv)
        _enable_float64()
        enable_compilation_cache()
        return args.func(args)
    except ValueError as err:
        message = " ".join(str(err).split())
        print(f"toysim: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toysim: interrupted", file=sys.stderr)
        return 130


_SIGPIPE_STATUS = 141  # what a shell reports for a process ended by SIGPIPE


def _flush(code: int) -> int:
    """Flush stdout and stderr; the exit status becomes 141 if stdout's reader went away."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:
            if stream is sys.stdout and code == 0:
                code = _SIGPIPE_STATUS
        except ValueError:  # a stream closed by the command
            pass
    return code


def console() -> None:
    """The ``toysim`` console script and ``python -m toysim``: :func:`main`, then a quick exit.

    Once a command has returned, Python's finalisation would tear down jax's and XLA's objects one
    by one: 0.1-0.4 s on 2 cores (measured on ``python -c "import jax"`` and on ``toysim exact``),
    a tenth of a warm ``toysim exact`` run, for nothing. By then the command's work is done: every
    file toysim writes is closed by the command itself, stdout and stderr are flushed here, and the
    handlers registered with :mod:`atexit` (JAX's among them) run here too. The process then ends
    with :func:`os._exit`, which skips only that teardown. In-process callers (tests, notebooks)
    call :func:`main`, which returns.
    """
    import atexit
    import os

    try:
        code = main()
    except SystemExit as stop:  # argparse's --help and usage errors
        code = stop.code
    except BrokenPipeError:  # the reader of stdout went away (`toysim exact ... | head`)
        code = _SIGPIPE_STATUS
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    code = _flush(code)
    atexit._run_exitfuncs()
    code = _flush(code)  # what the exit handlers wrote
    os._exit(code)


if __name__ == "__main__":
    console()
