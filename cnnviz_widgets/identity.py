"""What identifies a preprocessing from one kernel to the next, exactly or not at all.

The disk cache keeps a pass's results under a digest of everything they depend on, the preprocessing
included. Two preprocessings may share a digest only if they compute the same thing, today and in a kernel
started next week; otherwise a later dashboard reads another preprocessing's predictions. :func:`digest`
serialises what a callable computes with, recursively:

- a function: its module, name and compiled code (nested functions' code too), its defaults, the values in
  its closure cells and the globals its code reads;
- a ``functools.partial``: its function, arguments and keywords; a bound method: its function and object;
- an object (a torchvision transform, a ``Compose``, a callable class of the user's, an ``nn.Module``): its
  class and its state (``__getstate__``, or its attributes and slots), recursively. Tensors and arrays count
  by dtype, shape and bytes, enums (PIL's and torchvision's interpolation modes) by name, dicts in their
  order (an ``nn.Sequential`` runs its modules in that order), sets sorted;
- a class or function of an installed library (site-packages or the standard library), and a function
  written in C such as ``torch.as_tensor``: its qualified name and the library's version. A class defined
  anywhere else (a notebook, a module beside it, an editable install) counts by the code of its methods.

Where that cannot be done exactly the answer is None, "cannot tell", and the results are not kept:

- a preprocessing that draws random numbers (``RandomResizedCrop``, ``ColorJitter``, a function calling
  ``torch.rand``): the same settings give other pictures on each call, so there is no "result of this
  preprocessing" to keep. It is recognised by the names its code reads (:data:`RANDOM_NAMES`, and names
  starting with ``rand``/``Rand``), following ``forward`` or ``__call__`` into the methods it calls on its
  object and the module-level functions it calls. Dropout, RReLU and batch normalisation in training mode
  count as random. A seeded generator counts as random too: the code is not read closely enough to prove
  that a seed makes it repeat;
- state that cannot be read from Python: a random generator, a file, a generator, a lock, an object of a C
  type that cannot be pickled;
- a module that is not an installed library, read by a function (``helpers.prepare(picture)``): its code
  may have changed on disk since it was imported, and what is in memory cannot be read cheaply;
- more than :data:`MAX_PARTS` parts (a dataset or a model in a global the function reads): too long to
  serialise before every pass.

A cycle (a method's ``__class__`` cell, a recursive function, a module holding its parent) is written as a
reference back to the part it returns to, which is exact: the same structure gives the same references.
"""

from __future__ import annotations

import collections
import copyreg
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import io
import os
import pathlib
import random
import site
import sys
import sysconfig
import types

import numpy as np
import torch
from PIL import Image
from torch import nn

RANDOM_NAMES = frozenset(
    {
        # torch's samplers, as functions and as in-place tensor methods
        "normal", "normal_", "uniform_", "bernoulli", "bernoulli_", "multinomial", "poisson", "exponential_",
        "geometric_", "cauchy_", "log_normal_", "_sample_dirichlet", "_standard_gamma",
        # Python's and numpy's generators
        "shuffle", "choice", "choices", "sample", "gauss", "permutation", "default_rng",
        # torchvision's augmentations whose names do not start with "Random"
        "ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "GaussianBlur",
        "GaussianNoise", "ElasticTransform", "JPEG",
    }
)
"""Names whose reading marks code as random, besides every name starting with ``rand`` or ``Rand``
(``torch.rand``, ``randint``, ``randperm``, the ``random`` module, ``RandomResizedCrop``...)."""

MAX_PARTS = 100_000
"""Parts (objects, containers, functions) one digest may read: a Compose of five torchvision transforms has 78."""

# Python 3.11 gave every object a __getstate__; before it, a class without one has none.
_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)
_HEAP_TYPE = 1 << 9
_IMMUTABLE_TYPE = 1 << 8
_RANDOM_SOURCES = (random.Random, np.random.Generator, np.random.RandomState, np.random.BitGenerator, torch.Generator)
_STOCHASTIC_WHEN_TRAINING = (nn.modules.dropout._DropoutNd, nn.RReLU, nn.modules.batchnorm._BatchNorm)
_RUNNING = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
_DESCRIPTORS = (
    types.MethodDescriptorType, types.WrapperDescriptorType, types.ClassMethodDescriptorType,
    types.GetSetDescriptorType, types.MemberDescriptorType,
)
# A class's own bookkeeping: where it was written (a line number changes when a cell above it grows), its
# annotations and the cache of its ABC registrations; none of it changes what the class computes.
_CLASS_BOOKKEEPING = frozenset(
    {
        "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__firstlineno__", "__static_attributes__",
        "__annotations__", "_abc_impl",
    }
)


class Uncertain(Exception):
    """A part that cannot be identified exactly: ``reason`` says what and why, ``path`` where (innermost first).
    ``whole``: the reason is about the whole value, not about the part where it was found."""

    def __init__(self, reason: str, whole: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.whole = whole
        self.path: list[str] = []


def digest(value) -> bytes | None:
    """32 bytes that identify what ``value`` (a callable, or anything it is made of) computes, the same in every
    process; None when that cannot be told exactly (see the module's docstring)."""
    return _identify(value)[0]


def uncertain_reason(value, name: str = "preprocess") -> str | None:
    """Why :func:`digest` of ``value`` is None, naming the part, e.g. ``"preprocess.transforms[1]: a
    torchvision.transforms.transforms.RandomResizedCrop draws random numbers on each call
    (RandomResizedCrop.get_params calls randint)"``; None when ``value`` is identified. ``name`` is what the
    user calls ``value``."""
    uncertain = _identify(value)[1]
    return None if uncertain is None else f"{name}{''.join(reversed(uncertain.path))}: {uncertain.reason}"


def _identify(value) -> tuple[bytes | None, Uncertain | None]:
    try:
        return hashlib.sha256(_Identifier().part(value)).digest(), None
    except Uncertain as uncertain:
        return None, uncertain
    except RecursionError:
        return None, Uncertain("it is nested too deeply to read")
    except Exception as error:
        # An object that fails to be read (a property that raises, a broken __reduce__) costs the caching
        # of its results, never the pass itself.
        return None, Uncertain(f"it could not be read ({type(error).__name__}: {error})")


def _compound(tag: bytes, parts) -> bytes:
    digest = hashlib.sha256(tag)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return b"#" + digest.digest()


def _text(*words: str) -> bytes:
    return "\0".join(words).encode("utf-8", "surrogatepass")


def _int(value: int) -> bytes:
    return b"i" + value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)


_ATOMS = {
    type(None): lambda value: b"None",
    bool: lambda value: b"True" if value else b"False",
    int: _int,
    float: lambda value: b"f" + value.hex().encode(),
    complex: lambda value: b"c" + value.real.hex().encode() + b"," + value.imag.hex().encode(),
    str: lambda value: b"s" + value.encode("utf-8", "surrogatepass"),
    bytes: lambda value: b"b" + value,
    type(Ellipsis): lambda value: b"Ellipsis",
    type(NotImplemented): lambda value: b"NotImplemented",
    torch.dtype: lambda value: b"torch dtype " + str(value).encode(),
    torch.device: lambda value: b"torch device " + str(value).encode(),
}


def _qualified(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Identifier:
    """One digest's walk: parts already serialised (kept alive, so that their ids stay theirs) and the parts
    being serialised, by depth, for references back."""

    def __init__(self):
        self._done: dict[int, tuple[object, bytes]] = {}
        self._open: dict[int, int] = {}

    def part(self, value) -> bytes:
        atom = _ATOMS.get(type(value))
        if atom is not None:
            return atom(value)
        key = id(value)
        done = self._done.get(key)
        if done is not None:
            return done[1]
        depth = self._open.get(key)
        if depth is not None:
            return b"back to " + depth.to_bytes(4, "little")
        if len(self._done) >= MAX_PARTS:
            raise Uncertain(
                f"it is made of more than {MAX_PARTS:,} parts (a dataset or a model?): too many to read before each pass",
                whole=True,
            )
        self._open[key] = len(self._open)
        try:
            result = self._compound(value)
        finally:
            del self._open[key]
        self._done[key] = (value, result)
        return result

    def child(self, value, where: str) -> bytes:
        try:
            return self.part(value)
        except Uncertain as uncertain:
            if not uncertain.whole:
                uncertain.path.append(where)
            raise

    def _compound(self, value) -> bytes:
        kind = type(value)
        if kind is list or kind is tuple:
            return _compound(kind.__name__.encode(), [self.child(item, f"[{index}]") for index, item in enumerate(value)])
        if kind is dict or kind is types.MappingProxyType:
            return self._mapping(b"dict", value, "[{!r}]")
        if kind is collections.OrderedDict:
            return self._mapping(b"OrderedDict", value, "[{!r}]")
        if kind is set or kind is frozenset:
            return _compound(b"set", sorted(self.child(item, "{...}") for item in value))
        if isinstance(value, types.FunctionType):
            return self._function(value)
        if isinstance(value, types.MethodType):
            return _compound(b"method", [self.child(value.__func__, ".__func__"), self.child(value.__self__, ".__self__")])
        if isinstance(value, functools.partial):
            return _compound(
                b"partial",
                [
                    self.child(type(value), ""), self.child(value.func, ".func"), self.child(value.args, ".args"),
                    self.child(value.keywords, ".keywords"), self.child(vars(value), ""),
                ],
            )
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, types.CodeType):
            return self._code(value)
        if isinstance(value, type):
            return self._class(value)
        if isinstance(value, types.ModuleType):
            version = _library_version(value.__name__)
            if version is None:
                raise Uncertain(
                    f"the module {value.__name__} is not an installed library: its code may have changed since it was imported"
                )
            return _compound(b"module", [_text(value.__name__, version)])
        if isinstance(value, types.BuiltinFunctionType):
            return self._builtin(value)
        if isinstance(value, _DESCRIPTORS):
            return _compound(b"descriptor", [self.child(value.__objclass__, ".__objclass__"), _text(value.__name__)])
        if isinstance(value, types.MethodWrapperType):
            return _compound(b"method wrapper", [self.child(value.__self__, ".__self__"), _text(value.__name__)])
        if isinstance(value, (staticmethod, classmethod)):
            return _compound(kind.__name__.encode(), [self.child(value.__func__, ".__func__")])
        if isinstance(value, property):
            return _compound(b"property", [self.child(getattr(value, name), f".{name}") for name in ("fget", "fset", "fdel")])
        if isinstance(value, functools.cached_property):
            return _compound(b"cached property", [self.child(value.func, ".func")])
        if isinstance(value, enum.Enum):
            return _compound(b"enum", [self.child(kind, ""), _text(str(value._name_)), self.child(value._value_, "")])
        if isinstance(value, np.ufunc):
            return _compound(b"ufunc", [_text(value.__name__, _library_version("numpy"))])
        if isinstance(value, np.dtype):
            return _compound(b"numpy dtype", [_text(repr(value.descr) if value.fields else value.str)])
        if isinstance(value, np.generic):
            return _compound(b"numpy scalar", [_text(value.dtype.str), value.tobytes()])
        if isinstance(value, Image.Image):
            palette = value.getpalette()
            return _compound(
                b"picture", [_text(value.mode, repr(value.size), repr(palette)), hashlib.sha256(value.tobytes()).digest()]
            )
        if isinstance(value, pathlib.PurePath):
            return _compound(b"path", [self.child(kind, ""), _text(os.fspath(value))])
        return self._object(value)

    def _mapping(self, tag: bytes, mapping, label: str) -> bytes:
        parts = []
        for key, item in mapping.items():
            parts.append(self.child(key, " (a key)"))
            parts.append(self.child(item, label.format(key)))
        return _compound(tag, parts)

    def _function(self, function: types.FunctionType) -> bytes:
        module, name = function.__module__, function.__qualname__
        version = _library_version(module)
        if version is not None and _named(module, name) is function:
            reason = _library_randomness(function)
            if reason is not None:
                raise Uncertain(f"{module}.{name} draws random numbers on each call ({reason})")
            return _compound(b"library function", [_text(module, name, version)])
        code = function.__code__
        names = _names(code)
        drawn = _random_name(names)
        if drawn is not None:
            raise Uncertain(f"the function {name} draws random numbers on each call (it calls {drawn})")
        parts = [_text(str(module), name), self.child(code, ".__code__")]
        parts.append(self.child(function.__defaults__, ".__defaults__"))
        parts.append(self.child(function.__kwdefaults__, ".__kwdefaults__"))
        for variable, cell in zip(code.co_freevars, function.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:
                parts.append(b"empty cell")
                continue
            parts.append(self.child(contents, f" \N{RIGHTWARDS ARROW} its closure's {variable}"))
        read = function.__globals__
        for global_name in names:
            if global_name in read:
                parts.append(_text(global_name))
                parts.append(self.child(read[global_name], f" \N{RIGHTWARDS ARROW} the global {global_name}"))
        parts.append(self.child(vars(function), ""))
        return _compound(b"function", parts)

    def _code(self, code: types.CodeType) -> bytes:
        # Not the file name nor the line numbers: a notebook cell's file name changes with each kernel.
        # Python 3.10 has neither a qualified name nor an exception table in its code objects.
        names = (*code.co_names, "|", *code.co_varnames, "|", *code.co_freevars, "|", *code.co_cellvars)
        counts = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
        return _compound(
            b"code",
            [
                _text(code.co_name, getattr(code, "co_qualname", ""), *names),
                _text(repr(counts)),
                code.co_code,
                getattr(code, "co_exceptiontable", b""),
                *(self.child(constant, f".co_consts[{index}]") for index, constant in enumerate(code.co_consts)),
            ],
        )

    def _class(self, cls: type) -> bytes:
        module, name = cls.__module__, cls.__qualname__
        version = _library_version(module)
        in_python = _written_in_python(cls)
        # A library's class written in C may have no importable name (``_thread.lock``), but its code only
        # changes with the library's version.
        if version is not None and (not in_python or _named(module, name) is cls):
            return _compound(b"library class", [_text(module, name, version)])
        if not in_python:
            raise Uncertain(f"the class {_qualified(cls)} is written in C outside an installed library")
        parts = [_text(module, name)]
        parts.extend(self.child(base, f" \N{RIGHTWARDS ARROW} its base {base.__qualname__}") for base in cls.__bases__)
        for attribute, value in vars(cls).items():
            if attribute not in _CLASS_BOOKKEEPING:
                parts.append(_text(attribute))
                parts.append(self.child(value, f".{attribute}"))
        return _compound(b"class", parts)

    def _builtin(self, function: types.BuiltinFunctionType) -> bytes:
        owner = function.__self__
        module = function.__module__ or getattr(owner, "__name__", None)
        if _random_name((function.__name__,)) is not None:
            raise Uncertain(f"{module or type(owner).__name__}.{function.__name__} draws random numbers on each call")
        if owner is None or isinstance(owner, types.ModuleType):
            version = _library_version(module)
            if version is None:
                raise Uncertain(f"the C function {function.__qualname__} is not from an installed library")
            return _compound(b"builtin", [_text(module, function.__qualname__, version)])
        return _compound(b"builtin method", [self.child(owner, ".__self__"), _text(function.__name__)])

    def _tensor(self, tensor: torch.Tensor) -> bytes:
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta or tensor.is_nested:
            raise Uncertain(f"a tensor of layout {tensor.layout} cannot be read as bytes")
        data = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
        return _compound(
            b"tensor",
            [
                self.child(type(tensor), ""),
                _text(str(tensor.dtype), repr(tuple(tensor.shape)), tensor.device.type),
                hashlib.sha256(data.numpy()).digest(),
            ],
        )

    def _array(self, array: np.ndarray) -> bytes:
        dtype = repr(array.dtype.descr) if array.dtype.fields else array.dtype.str
        parts = [self.child(type(array), ""), _text(dtype, repr(array.shape))]
        if array.dtype.hasobject:
            parts.append(self.child(array.tolist(), ".tolist()"))
        else:
            parts.append(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
        return _compound(b"array", parts)

    def _object(self, value) -> bytes:
        cls = type(value)
        if isinstance(value, _RANDOM_SOURCES):
            raise Uncertain(f"a {_qualified(cls)} draws random numbers")
        if isinstance(value, _RUNNING):
            raise Uncertain(f"a {cls.__name__} gives what follows from how far it has run")
        if isinstance(value, io.IOBase):
            raise Uncertain(f"a {_qualified(cls)} is an open file or stream, read from where it stands")
        if isinstance(value, _STOCHASTIC_WHEN_TRAINING) and value.training:
            raise Uncertain(f"a {_qualified(cls)} in training mode gives another result on each call; call .eval() on it")
        reason = _behaviour_randomness(cls)
        if reason is not None:
            raise Uncertain(f"a {_qualified(cls)} draws random numbers on each call ({reason})")
        parts = [self.child(cls, "")]
        if isinstance(value, dict):
            parts.append(self._mapping(b"items", value, "[{!r}]"))
            if isinstance(value, collections.defaultdict):
                parts.append(self.child(value.default_factory, ".default_factory"))
        elif isinstance(value, (list, tuple)):
            parts.extend(self.child(item, f"[{index}]") for index, item in enumerate(value))
        elif isinstance(value, (set, frozenset)):
            parts.extend(sorted(self.child(item, "{...}") for item in value))
        elif not _defined_in_python(cls):
            return _compound(b"reduced", [*parts, self._reduced(value)])
        state = _state(value)
        if isinstance(state, dict):
            parts.append(self._mapping(b"state", state, ".{}"))
        else:
            parts.append(self.child(state, ".__getstate__()"))
        return _compound(b"object", parts)

    def _reduced(self, value) -> bytes:
        """An object of a C type by what pickling it keeps, for the few that say (a ``range``, a ``slice``,
        an ``operator.itemgetter``): a lock or a weak reference refuses, and stays uncertain."""
        # Some say it through copyreg rather than __reduce_ex__ (``re.Pattern``).
        reducer = copyreg.dispatch_table.get(type(value))
        try:
            reduced = value.__reduce_ex__(4) if reducer is None else reducer(value)
        except Exception:
            raise Uncertain(f"a {_qualified(type(value))} keeps its state in C, where it cannot be read") from None
        if isinstance(reduced, str):
            return _text(reduced)
        head, rest = reduced[:3], reduced[3:]
        items = (self.child(list(iterator or ()), ".__reduce__()") for iterator in rest)
        return _compound(b"reduce", [self.child(head, ".__reduce__()"), *items])


def _state(value):
    """What pickling ``value`` would keep of it: its ``__getstate__`` when its class writes one, else its
    attributes and slots (``object.__getstate__`` leaves slots in a separate dict)."""
    if getattr(type(value), "__getstate__", None) is not _DEFAULT_GETSTATE:
        try:
            return value.__getstate__()
        except Exception as error:
            raise Uncertain(f"a {_qualified(type(value))} cannot give its state ({type(error).__name__}: {error})") from None
    state = dict(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        slots = vars(cls).get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            stored = f"_{cls.__name__.lstrip('_')}{slot}" if slot.startswith("__") and not slot.endswith("__") else slot
            if hasattr(value, stored):
                state[stored] = getattr(value, stored)
    return state


def _written_in_python(cls: type) -> bool:
    """A class statement makes a heap type that stays mutable; a C class is static, or immutable when built
    from a spec."""
    return bool(cls.__flags__ & _HEAP_TYPE) and not cls.__flags__ & _IMMUTABLE_TYPE


def _defined_in_python(cls: type) -> bool:
    """Whether instances keep all their state where Python reads it: every class of the hierarchy but
    ``object`` is written in Python."""
    return all(base is object or _written_in_python(base) for base in cls.__mro__)


def _names(code: types.CodeType) -> tuple[str, ...]:
    """The global and attribute names a code object and the functions nested in it read, sorted."""
    names, pending = set(), [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        pending.extend(constant for constant in current.co_consts if isinstance(constant, types.CodeType))
    return tuple(sorted(names))


def _random_name(names) -> str | None:
    return next((name for name in names if name in RANDOM_NAMES or name.startswith(("rand", "Rand"))), None)


def _randomness(entries, owner: type | None) -> str | None:
    """The first random-number name read by the code of ``entries`` or of what they call: methods of
    ``owner`` that they name, and module-level functions of their globals. None when there is none."""
    pending, seen = list(entries), set()
    while pending:
        function = pending.pop()
        if not isinstance(function, types.FunctionType) or function in seen:
            continue
        seen.add(function)
        names = _names(function.__code__)
        drawn = _random_name(names)
        if drawn is not None:
            return f"{function.__qualname__} calls {drawn}"
        for name in names:
            if owner is not None:
                method = inspect.getattr_static(owner, name, None)
                pending.append(method.__func__ if isinstance(method, (staticmethod, classmethod)) else method)
            pending.append(function.__globals__.get(name))
    return None


def _behaviour_randomness(cls: type) -> str | None:
    if _library_version(cls.__module__) is not None:
        return _library_class_randomness(cls)
    return _class_randomness(cls)


def _class_randomness(cls: type) -> str | None:
    """Randomness in what a call runs: ``forward`` for a module (``nn.Module.__call__`` only runs hooks
    around it), ``__call__`` for any other object."""
    entry = "forward" if issubclass(cls, nn.Module) else "__call__"
    method = inspect.getattr_static(cls, entry, None)
    return _randomness([method], cls)


# Library code does not change while the process runs: each class and function is read once.
_library_class_randomness = functools.lru_cache(maxsize=4096)(_class_randomness)


@functools.lru_cache(maxsize=4096)
def _library_randomness(function: types.FunctionType) -> str | None:
    return _randomness([function], None)


def _named(module: str, qualname: str):
    """What ``module.qualname`` names today, or None: a function made inside another has no such name."""
    found = sys.modules.get(module)
    for part in qualname.split("."):
        if found is None:
            return None
        found = getattr(found, part, None)
    return found


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _library_version(module: str | None) -> str | None:
    """``"torchvision 0.19.1"`` for a module of an installed library (standard library: Python's version);
    None for the notebook's ``__main__``, a module next to it, or an editable install, whose code may change
    without a new version."""
    if not module:
        return None
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names:
        return f"python {sys.version}"
    package = sys.modules.get(top)
    return None if package is None else _package_version(package)


@functools.lru_cache(maxsize=None)
def _package_version(package: types.ModuleType) -> str | None:
    where = getattr(package, "__file__", None) or next(iter(getattr(package, "__path__", None) or ()), None)
    if where is None or not os.path.realpath(where).startswith(_library_roots()):
        return None
    version = getattr(package, "__version__", None)
    if not isinstance(version, str):
        distributions = importlib.metadata.packages_distributions().get(package.__name__, ())
        version = ",".join(sorted(importlib.metadata.version(name) for name in distributions)) or "unknown"
    return f"{package.__name__} {version}"
