"""Canonical encoding: msgpack of fixed-order arrays, exactly one encoding per value.

A value is a frozen dataclass encoded as the msgpack array of its fields in declaration
order. Field types are drawn from a closed set: int, bool, bytes (optionally of fixed or
bounded length), str (bounded), tuple[T, ...], T | None, nested dataclasses, and tagged
unions of record classes encoded as [tag, [fields...]]. No maps, no floats.

Decoding is strict: it rejects trailing bytes, anything over the size limits, wrong
types, unknown tags, and every encoding that is not the canonical one (it re-packs the
parsed msgpack tree and requires the same bytes: msgpack-python packs minimally, so a
non-minimal integer or length header, or str-for-bin, is caught there).
"""
from __future__ import annotations

import dataclasses
import operator
import threading
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import msgpack

from chain.constants import MAX_ARRAY_LEN, MAX_MESSAGE_BYTES, MAX_STR_BYTES
from chain.errors import CodecError

T = TypeVar("T")

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Len:
    """Annotated metadata: bytes of exactly n bytes."""
    n: int


@dataclass(frozen=True, slots=True)
class MaxLen:
    """Annotated metadata: bytes or str of at most n bytes, tuple of at most n items."""
    n: int


@dataclass(frozen=True, slots=True)
class Tagged:
    """Annotated metadata on a Union: members are encoded as [cls.TAG, [fields...]]."""


Hash32 = typing.Annotated[bytes, Len(32)]
PubKey = typing.Annotated[bytes, Len(32)]
Signature = typing.Annotated[bytes, Len(64)]

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]

_compiled: dict[Any, tuple[Encoder, Decoder]] = {}


def _fail(msg: str) -> typing.NoReturn:
    raise CodecError(msg)


# Dataclass encoders are generated as straight-line code (see _compile_dataclass_encoder).
# For a scalar type this holds a Python expression over a value `{v}` that is true only
# if the type's encoder would return the value unchanged: the generated code tests it
# inline and calls the encoder (which then raises with its own message) only when false.
# The encoders themselves stay the definition; these are fast paths that never decide alone.
_INLINE_CHECKS: dict[Encoder, str] = {}


def _compile_int() -> tuple[Encoder, Decoder]:
    def dec(x: Any) -> int:
        if type(x) is not int:
            _fail(f"expected int, got {type(x).__name__}")
        return x

    def enc(x: Any) -> int:
        if type(x) is not int or not INT_MIN <= x <= INT_MAX:
            _fail(f"cannot encode {x!r} as int")
        return x
    _INLINE_CHECKS[enc] = f"type({{v}}) is int and {INT_MIN} <= {{v}} <= {INT_MAX}"
    return enc, dec


def _compile_bool() -> tuple[Encoder, Decoder]:
    def check(x: Any) -> bool:
        if type(x) is not bool:
            _fail(f"expected bool, got {type(x).__name__}")
        return x
    _INLINE_CHECKS[check] = "type({v}) is bool"
    return check, check


def _compile_bytes(exact: int | None, maximum: int | None) -> tuple[Encoder, Decoder]:
    def check(x: Any) -> bytes:
        if type(x) is not bytes:
            _fail(f"expected bytes, got {type(x).__name__}")
        if exact is not None and len(x) != exact:
            _fail(f"expected {exact} bytes, got {len(x)}")
        if maximum is not None and len(x) > maximum:
            _fail(f"bytes too long: {len(x)} > {maximum}")
        return x

    # Hashes and keys, the most frequent fields, get a check of one line.
    def check_exact(x: Any) -> bytes:
        if type(x) is not bytes or len(x) != exact:
            return check(x)  # raises, with check's message
        return x

    if exact is not None and maximum is None:
        _INLINE_CHECKS[check_exact] = f"type({{v}}) is bytes and len({{v}}) == {exact}"
        return check_exact, check_exact
    if exact is None:
        limit = "" if maximum is None else f" and len({{v}}) <= {maximum}"
        _INLINE_CHECKS[check] = "type({v}) is bytes" + limit
    return check, check


def _compile_str(maximum: int) -> tuple[Encoder, Decoder]:
    def check(x: Any) -> str:
        if type(x) is not str:
            _fail(f"expected str, got {type(x).__name__}")
        # A code point is at most 4 bytes of UTF-8 (a lone surrogate 3): a string of at
        # most maximum // 4 code points fits without encoding it to count its bytes.
        if len(x) * 4 > maximum and len(x.encode("utf-8", "surrogatepass")) > maximum:
            _fail(f"string too long (> {maximum} bytes)")
        return x
    _INLINE_CHECKS[check] = f"type({{v}}) is str and len({{v}}) * 4 <= {maximum}"
    return check, check


def _compile_tuple(item: Any, maximum: int) -> tuple[Encoder, Decoder]:
    ienc, idec = compile_type(item)

    def enc(x: Any) -> list:
        if type(x) is not tuple:
            _fail(f"expected tuple, got {type(x).__name__}")
        if len(x) > maximum:
            _fail(f"too many items: {len(x)} > {maximum}")
        return list(map(ienc, x))

    def dec(x: Any) -> tuple:
        if type(x) is not list:
            _fail(f"expected array, got {type(x).__name__}")
        if len(x) > maximum:
            _fail(f"too many items: {len(x)} > {maximum}")
        return tuple(map(idec, x))
    return enc, dec


def _compile_optional(inner: Any) -> tuple[Encoder, Decoder]:
    ienc, idec = compile_type(inner)
    return (lambda x: None if x is None else ienc(x)), (lambda x: None if x is None else idec(x))


def _compile_dataclass(cls: type) -> tuple[Encoder, Decoder]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    codecs = [compile_type(hints[f.name]) for f in fields]
    decs = [c[1] for c in codecs]
    n = len(fields)
    cname = cls.__name__

    def dec(x: Any) -> Any:
        if type(x) is not list or len(x) != n:
            _fail(f"{cname}: expected array of {n} fields")
        try:
            return cls(*map(operator.call, decs, x))
        except CodecError as exc:
            raise CodecError(f"{cname}: {exc}") from None
    return _compile_dataclass_encoder(cls, names, [c[0] for c in codecs]), dec


def _compile_dataclass_encoder(cls: type, names: list[str], encs: list[Encoder]) -> Encoder:
    """The array of the fields' encodings, in order. Encoding every record and state value
    is the hot path of block processing, so this is generated as straight-line code:

        def enc(x):
            if type(x) is not cls: fail_type(x)
            v0 = x.name0
            if not (<inline check of v0>): v0 = e0(v0)   # or just v0 = e0(v0)
            ...
            return [v0, ...]

    which computes exactly [e(getattr(x, name)) for e, name in zip(encs, names)]."""
    lines = ["def enc(x):", "    if type(x) is not cls:", "        fail_type(x)"]
    for i, (name, field_enc) in enumerate(zip(names, encs)):
        lines.append(f"    v{i} = x.{name}")
        check = _INLINE_CHECKS.get(field_enc)
        if check is None:
            lines.append(f"    v{i} = e{i}(v{i})")
        else:
            lines.append(f"    if not ({check.format(v=f'v{i}')}):")
            lines.append(f"        v{i} = e{i}(v{i})")
    lines.append(f"    return [{', '.join(f'v{i}' for i in range(len(names)))}]")

    def fail_type(x: Any) -> typing.NoReturn:
        _fail(f"expected {cls.__name__}, got {type(x).__name__}")

    namespace: dict[str, Any] = {"cls": cls, "fail_type": fail_type}
    namespace.update((f"e{i}", field_enc) for i, field_enc in enumerate(encs))
    exec(compile("\n".join(lines), f"<encoder of {cls.__qualname__}>", "exec"), namespace)
    return namespace["enc"]


def with_fast_init(cls: type[T]) -> type[T]:
    """Class decorator, outside @dataclass(frozen=True, slots=True): the same __init__ (same
    parameters, defaults and result) storing each field through its slot's descriptor.

    A frozen dataclass's generated __init__ stores each field with object.__setattr__ by
    name, which made a 12-field state value cost more to build than to encode; calling the
    descriptors directly halves that. Values built for every record use it."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__} is not a frozen slotted dataclass")
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
            not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING for f in fields):
        raise TypeError(f"{cls.__name__}: only plain fields, no __post_init__")
    params, lines = ["self"], []
    namespace: dict[str, Any] = {}
    for i, f in enumerate(fields):
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            params.append(f"{f.name}=_d{i}")
            namespace[f"_d{i}"] = f.default
        namespace[f"_s{i}"] = cls.__dict__[f.name].__set__
        lines.append(f"    _s{i}(self, {f.name})")
    source = f"def __init__({', '.join(params)}):\n" + "\n".join(lines or ["    pass"])
    exec(compile(source, f"<__init__ of {cls.__qualname__}>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


def _compile_tagged(members: tuple[type, ...]) -> tuple[Encoder, Decoder]:
    by_tag: dict[int, tuple[type, Encoder, Decoder]] = {}
    by_cls: dict[type, tuple[int, Encoder]] = {}
    for cls in members:
        tag = cls.TAG
        if tag in by_tag:
            raise TypeError(f"duplicate tag {tag} in {members}")
        enc, dec = compile_type(cls)
        by_tag[tag] = (cls, enc, dec)
        by_cls[cls] = (tag, enc)

    def enc(x: Any) -> list:
        entry = by_cls.get(type(x))
        if entry is None:
            _fail(f"unknown record kind {type(x).__name__}")
        return [entry[0], entry[1](x)]

    def dec(x: Any) -> Any:
        if type(x) is not list or len(x) != 2 or type(x[0]) is not int:
            _fail("expected [tag, fields]")
        entry = by_tag.get(x[0])
        if entry is None:
            _fail(f"unknown record tag {x[0]}")
        return entry[2](x[1])
    return enc, dec


def compile_type(tp: Any) -> tuple[Encoder, Decoder]:
    """Return (to_wire, from_wire) functions for a type annotation, cached."""
    cached = _compiled.get(tp)
    if cached is not None:
        return cached
    result = _compile_uncached(tp)
    _compiled[tp] = result
    return result


def _compile_uncached(tp: Any) -> tuple[Encoder, Decoder]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        exact = next((m.n for m in meta if isinstance(m, Len)), None)
        maximum = next((m.n for m in meta if isinstance(m, MaxLen)), None)
        if any(isinstance(m, Tagged) for m in meta):
            return _compile_tagged(typing.get_args(base))
        if base is bytes:
            return _compile_bytes(exact, maximum)
        if base is str:
            return _compile_str(maximum or MAX_STR_BYTES)
        if typing.get_origin(base) is tuple:
            return _compile_tuple(typing.get_args(base)[0], maximum or MAX_ARRAY_LEN)
        raise TypeError(f"unsupported annotation {tp!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(non_none) == 1:
            return _compile_optional(non_none[0])
        raise TypeError(f"unsupported union {tp!r}: use Annotated[..., Tagged()]")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[T, ...] is supported, got {tp!r}")
        return _compile_tuple(args[0], MAX_ARRAY_LEN)
    if tp is bool:
        return _compile_bool()
    if tp is int:
        return _compile_int()
    if tp is bytes:
        return _compile_bytes(None, None)
    if tp is str:
        return _compile_str(MAX_STR_BYTES)
    if dataclasses.is_dataclass(tp):
        return _compile_dataclass(tp)
    raise TypeError(f"unsupported type {tp!r}")


def to_wire(value: Any, tp: Any = None) -> Any:
    """The msgpack-ready tree of a value (lists, ints, bytes, str, bool, None)."""
    return compile_type(tp if tp is not None else type(value))[0](value)


def from_wire(tree: Any, tp: type[T]) -> T:
    return compile_type(tp)[1](tree)


_packers = threading.local()


def get_packer() -> msgpack.Packer:
    # msgpack.packb(tree, use_bin_type=True) is Packer(use_bin_type=True).pack(tree): the
    # same bytes, but building the Packer costs as much as the packing. One is kept per
    # thread (a Packer holds a buffer and must not be shared); it resets after each pack.
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        return _packers.packer


def pack_tree(tree: Any) -> bytes:
    return get_packer().pack(tree)


def encode(value: Any, tp: Any = None) -> bytes:
    """The canonical bytes of a value."""
    return pack_tree(to_wire(value, tp))


def get_encoder(tp: Any) -> Callable[[Any], bytes]:
    """encode(·, tp) with the type looked up once: hashing an Annotated type or a union
    costs more than encoding a small value, so hot paths keep one of these instead."""
    to_wire_tp = compile_type(tp)[0]

    def encode_tp(value: Any) -> bytes:
        # pack_tree inlined: this runs for every record and state value of a block.
        try:
            packer = _packers.packer
        except AttributeError:
            packer = get_packer()
        return packer.pack(to_wire_tp(value))
    return encode_tp


def unpack_tree(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Parse msgpack strictly into a tree, rejecting anything not canonical."""
    if type(data) is not bytes:
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CodecError(f"encoding too large: {len(data)} > {max_bytes} bytes")
    try:
        tree = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_bin_len=max_bytes, max_str_len=max_bytes,
            max_array_len=MAX_ARRAY_LEN, max_map_len=0, max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise CodecError("trailing bytes after the value") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc
    if pack_tree(tree) != data:
        raise CodecError("non-canonical encoding")
    return tree


def decode(data: bytes, tp: type[T], max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """Decode canonical bytes into a value of type tp, or raise CodecError."""
    tree = unpack_tree(data, max_bytes)
    return from_wire(tree, tp)
