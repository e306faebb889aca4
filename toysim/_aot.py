"""Compiled programs kept on disk between processes: the executable cache.

JAX's persistent compilation cache (:func:`toysim._cli.enable_compilation_cache`) keeps what XLA
compiles, but every new process still traces each program to a jaxpr and lowers it to StableHLO
before it can look the compilation up. For ``toysim exact`` on 1.7e7 leaves that tracing and
lowering was 2.5 s of a 5.5 s run, and loading the compilation another 0.4 s. This module keeps the
compiled executable itself (``jax.experimental.serialize_executable``), so that a later process
with the same code, the same input shapes and the same machine loads it and runs it at once.

The key of an entry is a SHA-256 of everything the program depends on: the function's name, its
static arguments (described field by field; a numpy array by its bytes), the shape, dtype and weak
type of every input, the input tree, the source of every ``toysim`` module, the versions of Python,
jax and jaxlib, the backend and its devices, the CPU's architecture and instruction-set flags,
``XLA_FLAGS``, ``TOYSIM_SHARDING`` and the JAX options that change a lowering (float64, matmul
precision, dtype promotion). Functions and classes among the static arguments are described by
name only when they are the project's: toysim's (their code is in the source digest), or those of
the figures and the theorem checks of the same checkout (named with the digest of those two
packages' sources). A call whose static arguments cannot be described that way (a lambda, a
closure, a user's loss or policy class), or whose inputs are tracers or spread over several
devices, runs the ordinary ``jax.jit`` path.

The folder is kept under :data:`MAX_FOLDER_BYTES` (2 GiB): a store that takes it above removes
the entries used longest ago (a load marks an entry used), since every edit of toysim's source and
every new shape leaves entries behind. An entry that cannot be read back (truncated, written by
another jaxlib, removed by another process's trim) is compiled again and replaced; entries are
written to a temporary file and renamed into place, so concurrent processes never read half a
file. Entries are pickles that toysim writes into the user's own cache folder
(as JAX's own cache trusts its folder, trust this one as you trust that folder). The cache is on
wherever the compilation cache is (every ``toysim`` subcommand) and off with
``TOYSIM_NO_JAX_CACHE=1``; from Python it is off unless :func:`enable` is called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import pickle
import platform
import re
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

_folder: str | None = None
_loaded: dict[str, Any] = {}  # key -> executable, for repeated calls within one process
# (name, function, statics, their types, tree, avals, options) -> key, or None where the call is
# uncacheable: the in-process shortcut past _key, whose descriptions and hashing cost 0.1-0.2 ms a
# call. Statics are compared as jax.jit compares them: hash and equality, and the type of each
# top-level static (values nested inside a static, such as a dataclass's fields, are compared by
# equality alone, by jax.jit too).
_keys: dict[tuple, str | None] = {}
_MISSING = object()
_BROKEN = object()  # marks a key whose loaded executable failed to run in this process
_lock = threading.Lock()
_fingerprint: str | None = None
# An executable above this size is not written (a program that big compiles for long enough that a
# saved trace is a small part of it; the cache folder should not fill with them).
MAX_ENTRY_BYTES = 64 * 2**20
# The folder is kept below this size. Keys hold the source of every toysim module, so each edit and
# each new shape leaves entries behind (half a gigabyte had gathered on the development machine).
# When a store takes the folder above it, the entries used longest ago (a load marks an entry used)
# are removed until it is under three quarters of it.
MAX_FOLDER_BYTES = 2 * 2**30


# An executable that JAX itself loaded from its persistent cache cannot be serialised again: the
# copy misses compiled functions and fails when it runs ("Function ... not found"; measured with
# jaxlib 0.10.2 on the DP scan programs). So every executable stored here must be compiled afresh:
# it is compiled with an option that plain `jax.jit` never uses (one codegen part instead of
# several: the same code, same bits, measured on both engines' analyses), which gives it a key of
# its own in JAX's cache, and JAX is kept from writing it there (_no_jax_cache_write).
_COMPILER_OPTIONS = {"xla_cpu_parallel_codegen_split_count": 1}


def _no_jax_cache_write():
    """A context in which JAX does not write compilations to its persistent cache (this thread)."""
    try:  # JAX's per-thread option; not public API, so fall back to the tombstones of `call`
        from jax._src.config import persistent_cache_min_compile_time_secs

        return persistent_cache_min_compile_time_secs(float("inf"))
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


class _Uncacheable(Exception):
    """A static argument with no stable description: run the ordinary jit path."""


def enable(folder: str) -> None:
    """Keep compiled executables under ``folder`` (created if missing; left off if it cannot be)."""
    global _folder
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    _folder = folder


def disable() -> None:
    """Stop reading and writing executables (the in-process memo is cleared too)."""
    global _folder
    _folder = None
    _loaded.clear()
    _keys.clear()


def folder() -> str | None:
    """The folder in use, or ``None`` when the cache is off."""
    return _folder


# The project's packages: toysim, and the figures and the theorem checks where they sit beside it
# in the same checkout. toysim's source is in every key (:func:`_environment`); a function or
# class of the other two is described with the digest of both their sources (they import each
# other's helpers). Anything else (a user's module, tests, a script) is not described.
_PROJECT_PACKAGES = ("figures", "proofs_check")


@functools.cache
def _sources_digest(folders: tuple[str, ...]) -> str:
    """SHA-256 of the ``.py`` files of the given package folders."""
    source = hashlib.sha256()
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    source.update(f"{os.path.basename(folder)}/{name}".encode() + b"\0" + f.read() + b"\0")
    return source.hexdigest()


def _toysim_folder() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _project_digest(module: str) -> str | None:
    """``None`` for toysim's own modules (their source is in every key); the digest of the figures'
    and the checks' sources for a module of theirs loaded from this checkout; raises
    :class:`_Uncacheable` for any other module."""
    top = module.partition(".")[0]
    if top == "toysim":
        return None
    root = os.path.dirname(_toysim_folder())
    path = getattr(sys.modules.get(top), "__file__", None)
    if (
        top not in _PROJECT_PACKAGES
        or not path
        or os.path.dirname(os.path.dirname(os.path.abspath(path))) != root
    ):
        raise _Uncacheable(module)
    folders = tuple(os.path.join(root, p) for p in _PROJECT_PACKAGES if os.path.isdir(os.path.join(root, p)))
    return _sources_digest(folders)


def _named(module: str, qualname: str) -> str:
    digest = _project_digest(module)
    return f"{module}.{qualname}" + ("" if digest is None else f"@{digest}")


def _describe(obj: Any) -> str:
    """A description of a static argument that is equal across processes exactly when it is equal."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
        return f"ndarray:{obj.dtype.str}:{obj.shape}:{digest}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}(" + ",".join(_describe(x) for x in obj) + ")"
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return "dict(" + ",".join(f"{_describe(k)}={_describe(v)}" for k, v in items) + ")"
    if isinstance(obj, np.dtype):
        return f"dtype:{obj.str}"
    if isinstance(obj, jax.tree_util.PyTreeDef):
        return f"treedef:{obj}"
    if isinstance(obj, functools.partial):
        return f"partial({_describe(obj.func)},{_describe(obj.args)},{_describe(obj.keywords)})"
    if isinstance(obj, types.FunctionType) and getattr(obj, "_program_of", None) is not None:
        # a function decorated with `program`: it runs the function it wraps, described by its name
        return f"program:{_describe(obj._program_of)}"
    if isinstance(obj, types.FunctionType):
        # a module-level function of toysim is named by where it lives: its code is in the source
        # digest. A lambda, a closure, or a function (or below, a class) from outside toysim, whose
        # code an edit could change under the same name, is not described.
        if "<" in obj.__qualname__ or obj.__closure__:
            raise _Uncacheable(obj.__qualname__)
        return f"function:{_named(obj.__module__, obj.__qualname__)}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = _named(type(obj).__module__, type(obj).__qualname__)
        fields = ",".join(f"{f.name}={_describe(getattr(obj, f.name))}" for f in dataclasses.fields(obj))
        return f"{name}({fields})"
    raise _Uncacheable(type(obj).__name__)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _environment() -> str:
    """Everything outside the call that the compiled program depends on (computed once)."""
    global _fingerprint
    if _fingerprint is None:
        import jaxlib

        parts = [
            _sources_digest((_toysim_folder(),)),
            sys.version,
            jax.__version__,
            jaxlib.__version__,
            jax.default_backend(),
            ",".join(f"{d.platform}:{d.device_kind}" for d in jax.devices()),
            platform.machine(),
            _cpu_flags(),
            os.environ.get("XLA_FLAGS", ""),
        ]
        _fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return _fingerprint + repr(_options())


def _options() -> tuple:
    """The settings read while tracing that can change within a process."""
    config = jax.config
    return (
        config.jax_enable_x64,
        config.jax_default_matmul_precision,
        config.jax_numpy_dtype_promotion,
        os.environ.get("TOYSIM_SHARDING"),  # read while tracing (toysim.shard_prefixes)
    )


def _avals(leaves: list) -> list[tuple]:
    """``(dtype, shape, weak type)`` of each array argument."""
    out = []
    for x in leaves:
        if isinstance(x, (jax.Array, np.ndarray)) and not isinstance(x, jax.core.Tracer):
            out.append((x.dtype, x.shape, bool(getattr(x, "weak_type", False))))
        else:
            aval = jax.typeof(x)
            out.append((aval.dtype, tuple(aval.shape), bool(getattr(aval, "weak_type", False))))
    return out


def _key(name: str, statics: list, leaves: list, tree, avals: list[tuple] | None = None) -> str:
    avals = _avals(leaves) if avals is None else avals
    shapes = ";".join(f"{dtype}{tuple(shape)}{'w' if weak else ''}" for dtype, shape, weak in avals)
    options = repr(sorted(_COMPILER_OPTIONS.items()))
    text = "\n".join([name, _describe(statics), shapes, str(tree), options, _environment()])
    return hashlib.sha256(text.encode()).hexdigest()


def _cached_key(name: str, jitted: Callable, statics: list, leaves: list, tree) -> str | None:
    """:func:`_key`, or ``None`` for an uncacheable call, memoised within the process."""
    avals = _avals(leaves)
    positional, keywords = statics[:-1], statics[-1]
    # the statics themselves (hash and equality) and, as jax.jit checks them, their types: 1, 1.0
    # and True are equal in Python but are three programs
    types = tuple(type(x) for x in positional) + tuple(type(v) for _, v in keywords)
    try:
        fast = (name, jitted, tuple(positional), tuple(keywords), types, tree, tuple(avals), _options())
        hash(fast)
    except TypeError:  # an unhashable static (jax.jit would refuse it too): no shortcut
        fast = None
    if fast is not None:
        known = _keys.get(fast, _MISSING)
        if known is not _MISSING:
            return known
    try:
        key = _key(name, statics, leaves, tree, avals)
    except _Uncacheable:
        key = None
    if fast is not None:
        with _lock:
            _keys[fast] = key
    return key


def _plain(leaves: list) -> bool:
    """Inputs that an executable can take: concrete values, none spread over several devices."""
    for x in leaves:
        if isinstance(x, jax.core.Tracer):
            return False
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            return False
    return True


def _custom_calls(compiled) -> set[str]:
    """The custom-call targets a compiled program calls into (LAPACK kernels, callbacks, ...)."""
    return set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))


def _storable(targets: set[str]) -> bool:
    """Whether a program with these custom calls can be stored.

    A custom call is a function pointer that the runtime registers when JAX *lowers* an operation
    that needs it; a loaded program skips the lowering, and calling an unregistered LAPACK kernel
    crashed the process (measured: the certified Newton step's ``lapack_dsyevd_ffi``). LAPACK
    kernels are registered by :func:`_initialize_lapack` before such a program is loaded; any other
    target (host callbacks, FFT, ...) keeps its program out of the cache.
    """
    return all(t.startswith("lapack_") for t in targets)


@functools.cache
def _initialize_lapack() -> None:
    """Register JAX's LAPACK kernels, as lowering any LAPACK-backed operation does (once)."""
    jax.jit(jax.numpy.linalg.eigh).lower(np.eye(2))


def _load(path: str):
    from jax.experimental.serialize_executable import deserialize_and_load

    with open(path, "rb") as f:
        payload, in_tree, out_tree, targets = pickle.load(f)
    if not _storable(set(targets)):
        raise ValueError(f"{path}: custom calls {targets}")
    if targets:
        _initialize_lapack()
    return deserialize_and_load(payload, in_tree, out_tree)


def _trim(folder: str) -> None:
    """Remove the least recently used entries while the folder is above :data:`MAX_FOLDER_BYTES`."""
    entries, total = [], 0
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.endswith(".exe"):
                    try:
                        stat = entry.stat()
                    except OSError:  # removed by another process meanwhile
                        continue
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
                    total += stat.st_size
    except OSError:
        return
    if total <= MAX_FOLDER_BYTES:
        return
    for _, size, path in sorted(entries):
        if total <= 0.75 * MAX_FOLDER_BYTES:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size


def _store(path: str, compiled) -> None:
    from jax.experimental.serialize_executable import serialize

    targets = _custom_calls(compiled)
    if not _storable(targets):
        return
    entry = (*serialize(compiled), sorted(targets))
    blob = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
    if len(blob) > MAX_ENTRY_BYTES:
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    _trim(os.path.dirname(path))


def call(name: str, jitted: Callable, args: tuple, static: tuple[int, ...] = (), kwargs: dict | None = None):
    """``jitted(*args, **kwargs)``, run from a saved executable when the cache is on.

    Args:
      name: a name for the program, unique among the callers of this function (part of the key
        and of the file name).
      jitted: a ``jax.jit``-wrapped function.
      args: its positional arguments.
      static: the positions in ``args`` of its static arguments; the others are arrays (or
        pytrees of arrays).
      kwargs: keyword arguments, all of them static.

    Returns:
      What ``jitted(*args, **kwargs)`` returns, bit for bit: the same compiled program runs either
      way.
    """
    kwargs = kwargs or {}
    if _folder is None:
        return jitted(*args, **kwargs)
    statics = [args[i] for i in static] + [sorted(kwargs.items())]
    dynamic = tuple(a for i, a in enumerate(args) if i not in static)
    leaves, tree = jax.tree_util.tree_flatten(dynamic)
    if not _plain(leaves):
        return jitted(*args, **kwargs)
    key = _cached_key(name, jitted, statics, leaves, tree)
    if key is None:
        return jitted(*args, **kwargs)
    with _lock:
        compiled = _loaded.get(key)
    if compiled is _BROKEN:
        return jitted(*args, **kwargs)
    path = os.path.join(_folder, f"{name}-{key[:32]}.exe")
    if compiled is None:
        if os.path.exists(path + ".broken"):  # failed to run once: this key takes the jit path
            with _lock:
                _loaded[key] = _BROKEN
            return jitted(*args, **kwargs)
        if os.path.exists(path):
            try:
                compiled = _load(path)
            except Exception:  # unreadable or from another runtime: compile it again below
                compiled = None
            else:
                with contextlib.suppress(OSError):  # used now: the last to go when trimmed
                    os.utime(path)
        if compiled is None:
            with _no_jax_cache_write():
                compiled = jitted.lower(*args, **kwargs).compile(_COMPILER_OPTIONS)
            out = jax.block_until_ready(compiled(*dynamic))
            try:
                _store(path, compiled)
            except Exception:  # an executable the backend cannot serialise: still run it
                pass
            with _lock:
                _loaded[key] = compiled
            return out
        with _lock:
            _loaded[key] = compiled
    try:
        return jax.block_until_ready(compiled(*dynamic))
    except jax.errors.JaxRuntimeError:
        # a loaded program that cannot run (see _COMPILER_OPTIONS): drop it, leave a tombstone so
        # that later processes do not load it again, and run the ordinary jit path
        with _lock:
            _loaded[key] = _BROKEN
        try:
            os.replace(path, path + ".broken")
        except OSError:
            pass
        return jitted(*args, **kwargs)


# Inputs that a program decorated with `program` takes as arrays (anything else runs uncompiled).
_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def program(*, static_argnames: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator: a library function compiled whole with ``jax.jit``, run through :func:`call`.

    Called outside ``jit``, a function runs op by op, and every operation on a new shape is traced,
    lowered and looked up in JAX's cache on its own: a few milliseconds each, most of what the
    theorem checks and the figures spent outside their compiled programs. Decorated, it is one
    program: loaded from the executable cache where the cache is on, else compiled by ``jax.jit``;
    inside a traced function it is an ordinary nested ``jax.jit``. Where an input is not an array
    (the product engine, which is built inside compiled functions, or the tree's shape without a
    policy) the function runs as written.

    Args:
      static_argnames: the parameters that are static (a policy, a position ``t``); the others are
        arrays or pytrees of arrays. For a method, name ``"self"``.

    The program's name in the cache is the function's module and qualified name; the decorated
    function keeps the original as ``__wrapped__`` (op by op) and its ``jax.jit`` as ``jitted``.
    """

    def wrap(fn: Callable) -> Callable:
        import inspect

        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if any(p.kind not in plain for p in params):
            raise TypeError(f"{fn.__qualname__}: program() takes named parameters only, no *args or **kwargs")
        names = [p.name for p in params]
        unknown = set(static_argnames) - set(names)
        if unknown:
            raise TypeError(f"{fn.__qualname__}: no parameter {sorted(unknown)}")
        static = tuple(i for i, n in enumerate(names) if n in static_argnames)
        keyword = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        first_keyword = len(names) - len(keyword)

        def positional(*args):
            return fn(*args[:first_keyword], **dict(zip(keyword, args[first_keyword:])))

        positional.__name__ = positional.__qualname__ = fn.__qualname__
        jitted = jax.jit(positional, static_argnums=static)
        name = f"{fn.__module__.rpartition('.')[2]}.{fn.__qualname__}"

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args = tuple(bound.arguments[n] for n in names)
            dynamic = [a for i, a in enumerate(args) if i not in static]
            if not all(isinstance(x, _ARRAY_LIKE) for x in jax.tree_util.tree_leaves(dynamic)):
                return positional(*args)
            return call(name, jitted, args, static=static)

        run._program_of = fn
        run.jitted = jitted  # the jax.jit of the function, all arguments positional
        return run

    return wrap
