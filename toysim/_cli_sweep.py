"""``toysim sweep SPEC``: analyse every instance of a sweep spec into one CSV table.

``toysim sweep SPEC`` runs (or resumes) the sweep; ``--replay ID`` prints the instance file of row
``ID``; ``--merge`` joins the part files of a multi-process run; ``--plot OUT.png --x X --y Y
[--group G]`` draws the table. Several processes: ``--process-id/--num-processes`` (part files
only), with ``--coordinator HOST:PORT`` (or ``TOYSIM_COORDINATOR``, ``TOYSIM_NUM_PROCESSES``,
``TOYSIM_PROCESS_ID``) to start ``jax.distributed`` first; then process 0 merges the parts.
See docs/sweeps.md.
"""

from __future__ import annotations

import json
import os
import sys

from ._cli import out_dir_arg


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def _processes(args) -> tuple[int, int, str | None]:
    """``(process_id, num_processes, coordinator)`` from the flags, else the environment."""
    coordinator = args.coordinator or os.environ.get("TOYSIM_COORDINATOR") or None
    num = args.num_processes if args.num_processes is not None else _env_int("TOYSIM_NUM_PROCESSES")
    pid = args.process_id if args.process_id is not None else _env_int("TOYSIM_PROCESS_ID")
    num = 1 if num is None else num
    pid = 0 if pid is None else pid
    if num < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num}")
    if not 0 <= pid < num:
        raise ValueError(f"--process-id must be in [0, {num}), got {pid}")
    if coordinator is not None and num == 1:
        raise ValueError("--coordinator needs --num-processes (or TOYSIM_NUM_PROCESSES) >= 2")
    return pid, num, coordinator


def _cmd_sweep(args) -> int:
    from ._sweep import load_sweep_spec, merge_sweep_parts, sweep, sweep_plot, sweep_replay

    spec = load_sweep_spec(args.spec, output=args.output)
    if args.replay is not None:
        json.dump(sweep_replay(spec, args.replay), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    if args.plot is not None:
        if not (args.x and args.y):
            raise ValueError("--plot needs --x COLUMN and --y COLUMN")
        sweep_plot(spec.output, x=args.x, y=args.y, group=args.group, out=args.plot)
        print(f"figure: {args.plot}")
        return 0
    pid, num, coordinator = _processes(args)
    if args.merge:
        print(f"table: {merge_sweep_parts(spec, num)}")
        return 0
    wait = 0.0
    if coordinator is not None:
        import jax

        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
        pid, num = jax.process_index(), jax.process_count()
        wait = args.merge_timeout  # the processes run together: process 0 waits for the others
    result = sweep(spec, process_id=pid, num_processes=num, wait_for_parts=wait)
    print(
        f"{result.path}: {result.computed} instances computed, {result.skipped} already there, "
        f"{result.chunks} chunks on {result.devices} device(s)"
    )
    if result.merged:
        print(f"table: {result.merged}")
    elif num > 1 and pid == 0:
        print(f"parts not all complete yet: run `toysim sweep {args.spec} --merge --num-processes {num}`")
    if coordinator is not None:
        import jax

        jax.distributed.shutdown()
    return 0


def register(sub) -> None:
    """Add ``sweep`` to the ``toysim`` subcommands."""
    p = sub.add_parser(
        "sweep",
        help="analyse every instance of a sweep spec into one CSV table (resumable)",
        description="Run a toysim.sweep/1 spec (JSON, or TOML on Python >= 3.11): same-shape instances "
        "batched with jax.vmap and sharded over the local devices, one CSV row per instance, appended "
        "chunk by chunk (a rerun resumes). See docs/sweeps.md.",
    )
    p.add_argument("spec", help="path of the sweep spec (.json or .toml)")
    p.add_argument(
        "--output", type=out_dir_arg, default=None, metavar="OUT.csv", help="override the spec's output"
    )
    p.add_argument("--replay", type=int, default=None, metavar="ID", help="print the instance file of row ID")
    p.add_argument("--merge", action="store_true", help="merge the part files of a multi-process run")
    p.add_argument(
        "--plot", default=None, metavar="OUT.png", help="draw --y against --x, one line per --group"
    )
    p.add_argument("--x", default=None, help="column on the x axis (--plot)")
    p.add_argument("--y", default=None, help="column on the y axis (--plot)")
    p.add_argument("--group", default=None, help="column giving one line per value (--plot)")
    p.add_argument(
        "--process-id", type=int, default=None, help="this process (default TOYSIM_PROCESS_ID or 0)"
    )
    p.add_argument(
        "--num-processes", type=int, default=None, help="processes sharing the sweep (TOYSIM_NUM_PROCESSES)"
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="start jax.distributed with this coordinator (TOYSIM_COORDINATOR)",
    )
    p.add_argument(
        "--merge-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="with --coordinator: seconds process 0 waits for the other parts before merging",
    )
    p.set_defaults(func=_cmd_sweep)
