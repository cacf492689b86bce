"""Read weights files without running the code a pickle can carry: ``paddle.save`` files and PyTorch checkpoints.

A ``.pdparams``, ``.pdopt``, ``.pth`` or ``.pth.tar`` file is a pickle, and unpickling calls whatever
importable function the file names (``os.system`` included). The unpicklers here resolve only an
allow-list of globals -- numpy array, dtype and scalar reconstruction, PyTorch's tensor-rebuild functions
and storage types, ``collections.OrderedDict`` and plain containers -- and refuse anything else with one
line naming the global, before anything is called. The opcodes that call or mutate objects are restricted
too: ``REDUCE`` calls only allow-listed callables, ``BUILD`` sets the state of a fresh numpy array or dtype
once (and of an ``OrderedDict``, which torch gives a ``_metadata`` attribute), ``NEWOBJ`` makes only plain
containers. That is why the pure-Python ``pickle._Unpickler`` is subclassed: the C unpickler lets a subclass
override ``find_class`` and ``persistent_load`` but not those opcodes.

PyTorch checkpoints are read without torch, in both layouts ``torch.save`` writes:

zip (torch >= 1.6)
    ``<root>/data.pkl`` whose persistent ids ``('storage', storage_type, key, location, numel)`` name the
    records ``<root>/data/<key>``; their bytes are in the order of ``<root>/byteorder`` (little when absent).
legacy (torch < 1.6, e.g. the CheXNet release ``model.pth.tar`` written by torch 0.3)
    consecutive pickles -- magic number, protocol version, system info, the object (persistent ids
    ``('storage', storage_type, root_key, location, numel, view_metadata)``), the list of storage keys --
    then, per key, an int64 element count and the raw little-endian bytes (as ``torch.load`` reads them).

A tensor (``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``) becomes a
numpy array: ``as_strided`` on its storage at its offset with its sizes and strides, after a bounds check,
then copied to a native-order C-contiguous array. bfloat16 becomes float32 (exactly: the same bits padded).
Sizes come from what will be allocated, never from what a file declares: a tensor that would copy into more
bytes than its storage holds (a stride-0 view of one element as 40000 x 40000) is refused past
:data:`MAX_EXPANDED_BYTES`, and a zip record is inflated in chunks, never past its declared size nor past
:data:`MAX_INFLATE_RATIO` times its compressed size.
Only numpy, the standard library and :mod:`chexcam.errors` are imported here; torch never is.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from .errors import WeightsError

__all__ = ["allowed_globals", "load", "load_paddle", "load_torch", "sniff"]

#: ``torch.serialization.MAGIC_NUMBER`` and ``PROTOCOL_VERSION`` of the legacy (non-zip) format.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_NEVER = "which a weights file never needs"
#: bytes a tensor may take beyond its storage's when copied (a broadcast view: stride 0)
MAX_EXPANDED_BYTES = 64 << 20
#: most a zip record may inflate, per compressed byte (floating-point weights hardly compress)
MAX_INFLATE_RATIO = 1000
_KINDS = "biufc"  # bool, signed, unsigned, float, complex: every dtype a weight or an optimizer moment has


class _Refused(Exception):
    """Something a weights file never contains; the message completes 'refused to load PATH: ...'."""


class _Corrupt(Exception):
    """A file that breaks its own format; the message completes 'cannot read PATH: ...'."""


# ---------------------------------------------------------------------------------------------
# numpy: the only callables a paddle.save file needs, each checking its arguments before numpy sees them

_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy(._core|.core).multiarray._reconstruct
_NP_SCALAR = np.float64(0).__reduce__()[0]  # numpy(._core|.core).multiarray.scalar


def _check_dtype(dt: Any) -> np.dtype:
    if not isinstance(dt, np.dtype):
        raise _Refused(f"it gives a {type(dt).__name__} where a numpy dtype belongs, {_NEVER}")
    if dt.kind not in _KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f"it builds numpy dtype '{dt.str}' (objects, records or text), {_NEVER}")
    canon = np.dtype(dt.str)
    if dt != canon or dt.flags != canon.flags or dt.itemsize != canon.itemsize:
        raise _Refused(f"it builds an inconsistent numpy dtype '{dt.str}', {_NEVER}")
    return dt


def _np_codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``: how Python 3 writes ``bytes`` in protocol 2 pickles (always latin-1)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"it calls _codecs.encode with encoding {encoding!r}, {_NEVER}")
    return text.encode("latin1")


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
    """``numpy._core.numeric._frombuffer`` (protocol 5 pickles), on bytes only, copied."""
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused(f"it builds a numpy array from a {type(buf).__name__}, {_NEVER}")
    arr = np.frombuffer(buf, _check_dtype(dtype))
    shape = _ints(shape, "shape")
    if order == "K" and axis_order is not None:
        if sorted(_ints(axis_order, "axis order")) != list(range(len(shape))):
            raise _Refused(f"it gives axis order {axis_order!r} for shape {shape}, {_NEVER}")
        return np.array(arr.reshape(shape, order="C").transpose(axis_order), order="C")
    return np.array(arr.reshape(shape, order="F" if order == "F" else "C"), order="C")


def _ints(values: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        raise _Refused(f"it gives {what} {values!r} that is not a list of non-negative integers, {_NEVER}")
    return tuple(values)


class _RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only allow-listed globals and restricts the opcodes that call or mutate.

    Subclasses extend :meth:`_globals` and override :meth:`persistent_load`.
    """

    def __init__(self, file) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = self._globals()
        # np.ndarray is named as _reconstruct's argument, never called: its constructor takes raw buffers
        self._callables = {id(v) for v in self._allowed.values() if callable(v) and v is not np.ndarray}
        self._settable: Dict[int, Any] = {}  # fresh numpy arrays/dtypes that may receive one BUILD

    # -- what may be named ------------------------------------------------------------------------
    def _globals(self) -> Dict[Tuple[str, str], Any]:
        out: Dict[Tuple[str, str], Any] = {
            ("collections", "OrderedDict"): OrderedDict,
            ("builtins", "tuple"): tuple, ("builtins", "list"): list, ("builtins", "dict"): dict,
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
            ("_codecs", "encode"): _np_codecs_encode,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): self._np_dtype,
        }
        for mod in ("numpy.core", "numpy._core"):
            out[(f"{mod}.multiarray", "_reconstruct")] = self._np_reconstruct
            out[(f"{mod}.multiarray", "scalar")] = self._np_scalar
            out[(f"{mod}.numeric", "_frombuffer")] = self._np_frombuffer
        return out

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 names, as pickle's own find_class maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._allowed.get((module, name))
        if found is None:
            raise _Refused(f"it references {module}.{name}, {_NEVER}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"it uses a pickle persistent id ({str(pid)[:60]}), which only PyTorch files have")

    # -- numpy, checked ---------------------------------------------------------------------------
    def _fresh(self, obj: Any) -> Any:
        self._settable[id(obj)] = obj
        return obj

    def _used(self, obj: Any) -> Any:
        """An array or dtype that is now part of something: its state is final."""
        self._settable.pop(id(obj), None)
        return obj

    def _np_dtype(self, spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
        if not isinstance(spec, str):
            raise _Refused(f"it builds a numpy dtype from a {type(spec).__name__}, {_NEVER}")
        dt = np.dtype(spec)
        if dt.kind not in _KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
            raise _Refused(f"it builds numpy dtype '{spec}' (objects, records or text), {_NEVER}")
        return self._fresh(np.dtype(dt, False, True))  # a copy: never numpy's shared singleton

    def _np_reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise _Refused(f"it reconstructs a numpy array of type {getattr(subtype, '__name__', subtype)}, {_NEVER}")
        if not isinstance(typecode, (bytes, str)) or len(typecode) != 1:
            raise _Refused(f"it reconstructs a numpy array with type code {typecode!r}, {_NEVER}")
        _ints(shape, "shape")  # always (0,): BUILD gives the real shape, so nothing is allocated here
        return self._fresh(_NP_RECONSTRUCT(np.ndarray, (0,), "b"))

    def _np_scalar(self, dtype: Any, data: Any = None) -> Any:
        dt = _check_dtype(self._used(dtype))
        if not isinstance(data, bytes) or len(data) != dt.itemsize:
            raise _Refused(f"it builds a numpy {dt} scalar from {type(data).__name__}, {_NEVER}")
        return _NP_SCALAR(dt, data)

    def _np_frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        return _np_frombuffer(buf, self._used(dtype), shape, order, axis_order)

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is OrderedDict:  # torch's state_dict() carries a _metadata attribute (module versions)
            if not isinstance(state, dict) or not all(type(k) is str and not k.startswith("__") for k in state):
                raise _Refused(f"it sets unusual attributes on an OrderedDict, {_NEVER}")
            inst.__dict__.update(state)
            return
        if id(inst) not in self._settable or not isinstance(inst, (np.ndarray, np.dtype)):
            raise _Refused(f"it sets the state of a {type(inst).__name__}, {_NEVER}")
        self._used(inst)
        if isinstance(inst, np.dtype):  # numpy writes (3, byteorder, None, None, None, -1, -1, flags)
            if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[1] not in ("<", ">", "|", "=")
                    or state[2:5] != (None, None, None) or state[5:7] != (-1, -1) or any(state[8:])):
                raise _Refused(f"it sets numpy dtype '{inst.str}' to a record, subarray or sized type, {_NEVER}")
            inst.__setstate__((3, state[1], None, None, None, -1, -1, np.dtype(inst.str).flags))
            _check_dtype(inst)
            return
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"it sets a numpy array from a {type(state).__name__}, {_NEVER}")
        dt = _check_dtype(self._used(state[-3]))
        if not isinstance(state[-1], (bytes, bytearray)):
            raise _Refused(f"it fills a numpy {dt} array from a {type(state[-1]).__name__}, {_NEVER}")
        _ints(state[-4], "shape")
        inst.__setstate__(state)
        _check_dtype(inst.dtype)

    # -- opcodes that call or mutate --------------------------------------------------------------
    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self._callables or not isinstance(args, tuple):
            raise _Refused(f"it calls a {type(func).__name__}, {_NEVER}")
        self.stack[-1] = func(*args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls not in (tuple, list, dict, set, frozenset, OrderedDict) or not isinstance(args, tuple):
            raise _Refused(f"it creates a {getattr(cls, '__name__', type(cls).__name__)} object, {_NEVER}")
        self.append(cls.__new__(cls, *args))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if kwargs:
            raise _Refused(f"it creates an object with keyword arguments, {_NEVER}")
        self._newobj()

    def _instantiate(self, klass: Any, args: List[Any]) -> None:
        if id(klass) not in self._callables:
            raise _Refused(f"it instantiates a {type(klass).__name__}, {_NEVER}")
        self.append(klass(*args))

    def _setitems_target(self) -> Any:
        target = self.stack[-1]
        if type(target) not in (dict, OrderedDict):
            raise _Refused(f"it sets items of a {type(target).__name__}, {_NEVER}")
        return target

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems_target()[key] = value

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self._setitems_target()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _append(self) -> None:
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise _Refused(f"it appends to a {type(self.stack[-1]).__name__}, {_NEVER}")
        self.stack[-1].append(value)

    def _appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise _Refused(f"it appends to a {type(self.stack[-1]).__name__}, {_NEVER}")
        self.stack[-1].extend(items)

    def _additems(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            raise _Refused(f"it adds items to a {type(self.stack[-1]).__name__}, {_NEVER}")
        self.stack[-1].update(items)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.APPEND[0]] = _append
    dispatch[pickle.APPENDS[0]] = _appends
    dispatch[pickle.ADDITEMS[0]] = _additems


def _unpickle(unpickler: _RestrictedUnpickler, path: str, what: str) -> Any:
    """Run ``unpickler.load()``; a refusal or any failure becomes one WeightsError line naming ``path``."""
    try:
        return unpickler.load()
    except _Refused as exc:
        raise WeightsError(f"refused to load {path}: {exc}") from None
    except _Corrupt as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # truncated, corrupt, or arguments a checked callable rejected
        raise WeightsError(f"cannot read {path}: not a valid {what} ({_brief(exc)})") from None


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# PyTorch


class _Elem:
    """A torch element type: a storage class (``torch.FloatStorage``) or a dtype (``torch.float32``)."""

    __slots__ = ("name", "dtype", "bf16")

    def __init__(self, name: str, code: str) -> None:
        self.name = name
        self.bf16 = code == "bf16"
        self.dtype = np.dtype("u2" if self.bf16 else code)  # bfloat16 is read as its bits


class _Storage:
    """A persistent id's storage: ``numel`` elements of ``elem`` from ``offset`` of the root storage ``key``."""

    __slots__ = ("key", "elem", "offset", "numel")

    def __init__(self, key: str, elem: _Elem, offset: int, numel: int) -> None:
        self.key, self.elem, self.offset, self.numel = key, elem, offset, numel


class _Tensor:
    """A tensor to build once every storage's bytes are known (legacy files store them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride", "elem", "metadata")

    def __init__(self, storage, offset, size, stride, elem=None, metadata=None) -> None:
        if not isinstance(storage, _Storage):
            raise _Refused(f"it rebuilds a tensor from a {type(storage).__name__} instead of a storage, {_NEVER}")
        if type(offset) is not int or offset < 0:
            raise _Refused(f"it rebuilds a tensor at storage offset {offset!r}, {_NEVER}")
        self.storage, self.offset = storage, offset
        self.size, self.stride = _ints(size, "tensor size"), _ints(stride, "tensor stride")
        if len(self.size) != len(self.stride):
            raise _Refused(f"it rebuilds a tensor with size {self.size} but stride {self.stride}, {_NEVER}")
        if elem is not None and not isinstance(elem, _Elem):
            raise _Refused(f"it rebuilds a tensor of dtype {elem!r}, {_NEVER}")
        if metadata and (not isinstance(metadata, dict) or set(metadata) - {"conj", "neg"}):
            raise _Refused(f"it rebuilds a tensor with metadata {metadata!r}, {_NEVER}")
        self.elem, self.metadata = elem or storage.elem, metadata or {}


_STORAGE_CODES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "ComplexDoubleStorage": "c16", "ComplexFloatStorage": "c8",
}
_DTYPE_CODES = {
    "float64": "f8", "double": "f8", "float32": "f4", "float": "f4", "float16": "f2", "half": "f2",
    "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4", "int16": "i2", "short": "i2",
    "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?",
    "complex128": "c16", "cdouble": "c16", "complex64": "c8", "cfloat": "c8",
}


def _ignore_grad(requires_grad: Any, backward_hooks: Any) -> None:
    if backward_hooks:  # an empty OrderedDict in every file torch writes; hooks would be functions
        raise _Refused(f"it attaches backward hooks to a tensor, {_NEVER}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    """``torch._utils._rebuild_tensor`` (torch 0.3, the CheXNet release)."""
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _ignore_grad(requires_grad, backward_hooks)
    return _Tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    _ignore_grad(requires_grad, backward_hooks)
    return _Tensor(storage, storage_offset, size, stride, elem=dtype, metadata=metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _ignore_grad(requires_grad, backward_hooks)
    if not isinstance(data, _Tensor):
        raise _Refused(f"it rebuilds a parameter from a {type(data).__name__}, {_NEVER}")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)  # Python attributes of a Parameter: dropped


class _TorchUnpickler(_RestrictedUnpickler):
    """Adds torch's tensor-rebuild functions, storage classes and dtypes; persistent ids become storages."""

    def __init__(self, file) -> None:
        super().__init__(file)
        self.storages: Dict[str, _Elem] = {}  # root key -> element type
        self.numels: Dict[str, int] = {}  # root key -> element count

    def _globals(self) -> Dict[Tuple[str, str], Any]:
        out = super()._globals()
        for fn in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                   _rebuild_parameter_with_state):
            out[("torch._utils", fn.__name__)] = fn
        for name, code in _STORAGE_CODES.items():
            for mod in ("torch", "torch.cuda"):
                out[(mod, name)] = _Elem(f"{mod}.{name}", code)
        for mod, name in (("torch", "UntypedStorage"), ("torch", "_UntypedStorage"), ("torch.storage", "UntypedStorage")):
            out[(mod, name)] = _Elem(f"{mod}.{name}", "u1")
        for name, code in _DTYPE_CODES.items():
            out[("torch", name)] = _Elem(f"torch.{name}", code)
        out[("torch", "Size")] = tuple
        return out

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"it uses persistent id {str(pid)[:60]}, {_NEVER}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":
            raise _Refused("it pickles a whole torch.nn.Module (code, not weights); save its state_dict() instead")
        if typename != "storage" or len(pid) not in (5, 6):
            raise _Refused(f"it uses persistent id {str(pid)[:60]}, {_NEVER}")
        elem, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(elem, _Elem) or elem.name.split(".")[-1] not in (*_STORAGE_CODES, "UntypedStorage",
                                                                           "_UntypedStorage"):
            raise _Refused(f"it names a storage of type {getattr(elem, 'name', type(elem).__name__)}, {_NEVER}")
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not isinstance(key, (str, int)) or type(numel) is not int or numel < 0:
            raise _Refused(f"it names storage {key!r} of {numel!r} elements, {_NEVER}")
        key = str(key)
        if self.storages.setdefault(key, elem) is not elem or self.numels.setdefault(key, numel) != numel:
            raise _Corrupt(f"storage {key} is declared twice with different types or sizes")
        if view is None:
            return _Storage(key, elem, 0, numel)
        _view_key, offset, size = view  # torch < 1.6: a view into the root storage
        if type(offset) is not int or type(size) is not int or offset < 0 or size < 0 or offset + size > numel:
            raise _Refused(f"it views elements {offset!r}..+{size!r} of a {numel}-element storage, {_NEVER}")
        return _Storage(key, elem, offset, size)


def sniff(path: str) -> str:
    """``torch_zip``, ``torch_legacy``, ``torch_tar`` or ``pickle`` (paddle.save and any other pickle)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "torch_zip"
    if head[257:262] == b"ustar":
        return "torch_tar"
    if any(head.startswith(pickle.dumps(MAGIC_NUMBER, protocol=p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)):
        return "torch_legacy"
    return "pickle"


def _tensor_array(t: _Tensor, raw: Dict[str, np.ndarray], order: str) -> np.ndarray:
    st = t.storage
    item = st.elem.dtype.itemsize
    data = raw[st.key][st.offset * item: (st.offset + st.numel) * item]
    elem = t.elem
    if len(data) % elem.dtype.itemsize:
        raise _Corrupt(f"storage {st.key} of {len(data)} bytes does not hold whole {elem.name} elements")
    buf = data.view(elem.dtype.newbyteorder(order))
    numel = int(np.prod(t.size, dtype=object)) if t.size else 1
    nbytes = numel * buf.dtype.itemsize
    if nbytes > max(len(data), 0) + MAX_EXPANDED_BYTES:
        raise _Corrupt(f"a tensor of size {list(t.size)} and stride {list(t.stride)} would copy its "
                       f"{len(buf)}-element storage {st.key} into {nbytes / 2**30:,.1f} GB")
    if 0 in t.size:
        arr = np.zeros(t.size, buf.dtype)
    else:
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if last >= len(buf):
            raise _Corrupt(f"a tensor of size {list(t.size)} and stride {list(t.stride)} at offset {t.offset} "
                               f"reads past the end of its {len(buf)}-element storage {st.key}")
        step = buf.dtype.itemsize
        arr = np.array(np.lib.stride_tricks.as_strided(buf[t.offset:], shape=t.size,
                                                       strides=[s * step for s in t.stride], writeable=False), order="C")
    if elem.bf16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if t.metadata.get("conj"):
        arr = np.conj(arr)
    if t.metadata.get("neg"):
        arr = np.negative(arr)
    return arr


def _read_legacy(path: str, fh) -> Tuple[Any, Dict[str, np.ndarray], str]:
    what = "PyTorch checkpoint"
    magic = _unpickle(_RestrictedUnpickler(fh), path, what)
    version = _unpickle(_RestrictedUnpickler(fh), path, what)
    if magic != MAGIC_NUMBER or version != PROTOCOL_VERSION:
        raise _Corrupt(f"unknown PyTorch legacy format (protocol {version!r}, expected {PROTOCOL_VERSION})")
    _unpickle(_RestrictedUnpickler(fh), path, what)  # system info: endianness and type sizes of the writer
    unpickler = _TorchUnpickler(fh)
    obj = _unpickle(unpickler, path, what)
    keys = _unpickle(_RestrictedUnpickler(fh), path, what)
    if not isinstance(keys, list):
        raise _Corrupt(f"its storage key list is a {type(keys).__name__}")
    raw: Dict[str, np.ndarray] = {}
    for key in map(str, keys):
        if key not in unpickler.storages:
            raise _Corrupt(f"storage {key} is listed but no tensor uses it")
        numel = unpickler.numels[key]
        head = fh.read(8)
        if len(head) < 8 or struct.unpack("<q", head)[0] != numel:
            raise _Corrupt(f"storage {key} should hold {numel} elements; the file is truncated or corrupt")
        nbytes = numel * unpickler.storages[key].dtype.itemsize
        data = fh.read(nbytes)
        if len(data) != nbytes:
            raise _Corrupt(f"truncated in storage {key} ({len(data)} of {nbytes} bytes)")
        raw[key] = np.frombuffer(data, np.uint8)
    missing = set(unpickler.storages) - set(raw)
    if missing:
        raise _Corrupt(f"the bytes of storage {sorted(missing)[0]} are missing")
    return obj, raw, "<"  # torch writes legacy storages little-endian whatever the machine


def _read_zip(path: str, zf: zipfile.ZipFile) -> Tuple[Any, Dict[str, np.ndarray], str]:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        kind = "a TorchScript archive (torch.jit.save)" if any(n.endswith("constants.pkl") for n in names) \
            else "a zip file without data.pkl"
        raise _Corrupt(f"it is {kind}, not a torch.save checkpoint")
    root = pkls[0][: -len("data.pkl")]
    order = "<"
    if root + "byteorder" in names:
        mark = zf.read(root + "byteorder")
        if mark not in (b"little", b"big"):
            raise _Corrupt(f"unknown byte order {mark[:20]!r}")
        order = "<" if mark == b"little" else ">"
    unpickler = _TorchUnpickler(io.BytesIO(_read_record(zf, pkls[0])))
    obj = _unpickle(unpickler, path, "PyTorch checkpoint")
    raw: Dict[str, np.ndarray] = {}
    for key, elem in unpickler.storages.items():
        name = f"{root}data/{key}"
        nbytes = unpickler.numels[key] * elem.dtype.itemsize
        if name not in names:
            raise _Corrupt(f"storage record {name} is missing")
        if zf.getinfo(name).file_size < nbytes:
            raise _Corrupt(f"storage record {name} has {zf.getinfo(name).file_size} bytes, needs {nbytes}")
        raw[key] = np.frombuffer(_read_record(zf, name, nbytes), np.uint8)[:nbytes]
    return obj, raw, order


def _read_record(zf: zipfile.ZipFile, name: str, need: int = -1) -> bytes:
    """The bytes of record ``name`` (the first ``need`` when ``need >= 0``), inflated 1 MiB at a time: a record
    that inflates past its declared size, or to more than :data:`MAX_INFLATE_RATIO` times its compressed size,
    is refused before it fills memory (``ZipFile.read`` inflates whatever the stream holds, then checks)."""
    info = zf.getinfo(name)
    declared = info.file_size
    if info.compress_type != zipfile.ZIP_STORED and declared > MAX_INFLATE_RATIO * info.compress_size + (1 << 20):
        raise _Corrupt(f"record {name} declares {declared:,} bytes from {info.compress_size:,} compressed "
                       f"(over {MAX_INFLATE_RATIO}:1)")
    want = declared if need < 0 else min(need, declared)
    out = bytearray()
    with zf.open(info) as fh:
        while len(out) < want:
            chunk = fh.read(min(1 << 20, want - len(out)))
            if not chunk:
                break
            out += chunk
        if need < 0 and fh.read(1):
            raise _Corrupt(f"record {name} inflates past its declared {declared:,} bytes")
    if len(out) < want:
        raise _Corrupt(f"record {name} holds {len(out):,} bytes, declares {declared:,}")
    return bytes(out)


def load_torch(path: str) -> Any:
    """A ``torch.save`` checkpoint (zip or legacy) as plain Python: tensors become numpy arrays.

    Raises:
        WeightsError: unreadable, truncated, a TorchScript or pre-0.1.10 tar archive, or a pickle that
            names anything but tensors, numpy arrays and containers (the global is named; nothing ran).
    """
    try:
        kind = sniff(path)
        if kind == "torch_zip":
            with zipfile.ZipFile(path) as zf:
                obj, raw, order = _read_zip(path, zf)
        elif kind == "torch_legacy":
            with open(path, "rb") as fh:
                obj, raw, order = _read_legacy(path, fh)
        elif kind == "torch_tar":
            raise _Corrupt("it is a torch < 0.1.10 tar checkpoint; load it once with that torch and save its "
                           "state_dict() again")
        else:
            raise _Corrupt("not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy format)")
    except _Corrupt as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"cannot read {path}: {_brief(exc)}") from None
    built: Dict[int, np.ndarray] = {}

    def tensor(t: _Tensor) -> np.ndarray:
        if id(t) not in built:
            built[id(t)] = _tensor_array(t, raw, order)
        return built[id(t)]

    def storage(s: _Storage) -> np.ndarray:  # a storage saved on its own: its elements, 1-D
        return _tensor_array(_Tensor(s, 0, (s.numel,), (1,)), raw, order)

    return _plain(obj, path, {_Tensor: tensor, _Storage: storage, _Elem: lambda e: e.dtype})


# ---------------------------------------------------------------------------------------------
# paddle

_NAME_TABLE = "StructuredToParameterName@@"
_BIG = "UnpackBigParamInfor@@"  # paddle.save splits arrays > 1 GiB into slices with protocol 2/3


def load_paddle(path: str) -> Any:
    """A ``paddle.save`` file as ``paddle.load(path, return_numpy=True)`` returns it, without paddle's pickle.

    Tensors are numpy arrays: plain state dicts store them as arrays with a name table (dropped here),
    nested objects (chexcam checkpoints, optimizer states) as ``(name, array)`` tuples (unwrapped here).
    """
    try:
        with open(path, "rb") as fh:
            obj = _unpickle(_RestrictedUnpickler(fh), path, "paddle.save file")
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {_brief(exc)}") from None
    untuple = True
    if isinstance(obj, dict):
        if _BIG in obj:
            _join_slices(obj, path)
        if _NAME_TABLE in obj:  # a plain state dict: arrays as they are, names dropped as paddle.load does
            del obj[_NAME_TABLE]
            untuple = False
    return _plain(obj, path, {}, untuple)


def _join_slices(obj: Dict[str, Any], path: str) -> None:
    try:
        for key, info in obj.pop(_BIG).items():
            parts = [obj.pop(part) for part in info["slices"]]
            obj[key] = np.concatenate(parts).reshape(_ints(info["OriginShape"], "shape"))
    except (KeyError, TypeError, ValueError, AttributeError, _Refused) as exc:
        raise WeightsError(f"cannot read {path}: its table of split parameters is broken ({_brief(exc)})") from None


# ---------------------------------------------------------------------------------------------
# common


_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _plain(obj: Any, path: str, convert: Dict[type, Callable[[Any], Any]], untuple: bool = False) -> Any:
    """A copy of ``obj`` with placeholders converted, numpy arrays in native byte order, and every leaf
    checked to be plain data (the unpicklers already ensure it; this is the second lock).

    ``untuple``: paddle.save writes a Tensor as ``(name, array)``; paddle.load (return_numpy) keeps the array.
    """
    done: Dict[int, Any] = {}

    def walk(o: Any) -> Any:
        t = type(o)
        if t in _LEAVES:
            return o
        if id(o) in done:
            return done[id(o)]
        if t in convert:
            out = convert[t](o)
        elif isinstance(o, np.dtype):
            out = _check_dtype(o)
        elif t is np.ndarray or isinstance(o, np.generic):
            _check_dtype(o.dtype)
            out = o.astype(o.dtype.newbyteorder("="), copy=False) if t is np.ndarray else o
        elif t in (dict, OrderedDict):
            out = done[id(o)] = t()
            out.update((walk(k), walk(v)) for k, v in o.items())
        elif t is list:
            out = done[id(o)] = []
            out.extend(walk(v) for v in o)
        elif untuple and t is tuple and len(o) == 2 and type(o[0]) is str and type(o[1]) is np.ndarray:
            out = walk(o[1])
        elif t in (tuple, set, frozenset):
            out = t(walk(v) for v in o)
        else:
            raise _Refused(f"it holds a {t.__name__}, {_NEVER}")
        done[id(o)] = out
        return out

    try:
        return walk(obj)
    except _Refused as exc:
        raise WeightsError(f"refused to load {path}: {exc}") from None
    except _Corrupt as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise WeightsError(f"cannot read {path}: its containers nest too deeply") from None
    except (TypeError, ValueError, MemoryError) as exc:
        raise WeightsError(f"cannot read {path}: {_brief(exc)}") from None


def load(path: str) -> Tuple[str, Any]:
    """Read any weights file safely: ``("torch", obj)`` for a PyTorch checkpoint, ``("paddle", obj)`` otherwise.

    The format is told by the content, not the file name. Tensors come back as numpy arrays.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    if sniff(path) == "pickle":
        return "paddle", load_paddle(path)
    return "torch", load_torch(path)


def allowed_globals() -> List[str]:
    """Every global a weights file may name (``module.name``), for documentation and error hints."""
    return sorted(f"{m}.{n}" for m, n in _TorchUnpickler(io.BytesIO(b""))._allowed)
