"""The ctypes binding (python/tpde/_native.py) against the C header it copies
by hand (include/tpde.h).

Both files change together as the ABI grows, so everything here is driven by
what they contain: every prototype in the header must have a ctypes
signature with the same return and argument types and vice versa, every
struct a ctypes Structure with the same fields in the same order, laid out
as the C compiler lays it out (checked by compiling a program that prints
sizeof, _Alignof and offsetof), and every status code and shared constant
the same value on both sides. A mismatch here is a call that passes
arguments in the wrong registers or reads a struct at the wrong offsets.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tpde import _native
from tpde.errors import TPDEError

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "include" / "tpde.h"

# C scalar types as ctypes spells them. ctypes aliases equal-sized types
# (c_int32 is c_int, c_uint64 is c_ulong and c_size_t on LP64), so this
# compares what the call ABI sees: width and signedness.
SCALARS: Dict[str, type] = {
    "char": ctypes.c_char,
    "signed char": ctypes.c_byte,
    "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int,
    "unsigned": ctypes.c_uint,
    "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long,
    "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "int8_t": ctypes.c_int8,
    "uint8_t": ctypes.c_uint8,
    "int16_t": ctypes.c_int16,
    "uint16_t": ctypes.c_uint16,
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "_Bool": ctypes.c_bool,
    "bool": ctypes.c_bool,
}


# Words that are part of a type, never a parameter's name.
TYPE_WORDS = {"void", "char", "short", "int", "long", "signed", "unsigned", "float", "double", "_Bool", "bool"}


# --- parsing the header -----------------------------------------------------


@dataclass
class CType:
    """A C type with qualifiers dropped: base name, pointer depth, array length."""

    base: str
    pointers: int = 0
    array: Optional[int] = None

    def __str__(self) -> str:
        return self.base + " " * bool(self.pointers) + "*" * self.pointers + (
            f"[{self.array}]" if self.array is not None else "")


@dataclass
class Param:
    name: str
    ctype: CType


    def __str__(self) -> str:
        return f"{self.ctype}{'' if self.ctype.pointers else ' '}{self.name}"


@dataclass
class Prototype:
    name: str
    ret: CType
    params: List[Param]


@dataclass
class Struct:
    name: str
    fields: List[Param] = field(default_factory=list)


@dataclass
class Header:
    prototypes: Dict[str, Prototype]
    structs: Dict[str, Struct]
    typedefs: Dict[str, CType]  # typedef <type> <name>; other than structs
    defines: Dict[str, int]  # object-like #defines with an integer value
    # Every identifier written as tpde_xxx( outside #define lines: the
    # parser must have turned each into a prototype.
    called_names: List[str]


def strip_comments(text: str) -> str:
    # The header's only string literal is extern "C", so no comment marker
    # hides in a string and regexes are enough. Continued lines are joined
    # so that a multi-line #define stays one line.
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text).replace("\\\n", " ")


def parse_int(token: str) -> Optional[int]:
    m = re.fullmatch(r"\(?\s*(-?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?", token.strip())
    if not m:
        return None
    return int(m.group(1) + m.group(2), 0)


def parse_decl(decl: str, defines: Dict[str, int]) -> Param:
    """'const uint64_t *shape' or 'uint64_t shape[TPDE_MAX_NDIM]' -> Param."""
    decl = " ".join(decl.replace("*", " * ").split())
    array = None
    m = re.fullmatch(r"(.*?)\s*\[\s*([^\]]+?)\s*\]", decl)
    if m:
        decl, dim = m.group(1), m.group(2)
        array = defines[dim] if dim in defines else parse_int(dim)
        assert array is not None, f"cannot read the array length {dim!r} in {decl!r}"
    words = [w for w in decl.split() if w not in ("const", "volatile", "restrict", "struct")]
    assert not {"enum", "union", "(", ")"} & set(words), f"the tests cannot read {decl!r} yet; extend parse_decl"
    if len(words) > 1 and words[-1] != "*" and words[-1] not in TYPE_WORDS and words[-1] not in SCALARS:
        name = words.pop()
    else:
        name = ""  # an unnamed parameter
    pointers = words.count("*")
    base = " ".join(w for w in words if w != "*")
    return Param(name, CType(base, pointers, array))


def parse_header(path: Path) -> Header:
    raw = path.read_text()
    defines: Dict[str, int] = {}
    for m in re.finditer(r"^\s*#\s*define\s+(\w+)[ \t]+([^\n]+)$", strip_comments(raw), flags=re.M):
        v = parse_int(m.group(2))
        if v is not None:
            defines[m.group(1)] = v
    # Preprocessor lines out (the header has no macros in declarations),
    # then the C++ guard's braces.
    text = "\n".join(line for line in strip_comments(raw).splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r'extern\s+"C"\s*\{', " ", text)

    structs: Dict[str, Struct] = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
        tag, body, alias = m.groups()
        assert tag == alias, f"struct {tag} is typedef'd as {alias}: the tests map one name"
        s = Struct(alias)
        for decl in body.split(";"):
            if decl.strip():
                s.fields.append(parse_decl(decl, defines))
        structs[alias] = s
    rest = re.sub(r"typedef\s+struct\s+\w+\s*\{.*?\}\s*\w+\s*;", " ", text, flags=re.S)

    typedefs: Dict[str, CType] = {}
    prototypes: Dict[str, Prototype] = {}
    for stmt in rest.replace("}", " ").split(";"):
        stmt = " ".join(stmt.split())
        if not stmt:
            continue
        if stmt.startswith("typedef "):
            p = parse_decl(stmt[len("typedef "):], defines)
            typedefs[p.name] = p.ctype
            continue
        m = re.fullmatch(r"(.+?)\b(\w+)\s*\((.*)\)", stmt)
        assert m, f"include/tpde.h: cannot read the declaration {stmt!r}"
        ret_text, name, args = m.groups()
        ret = parse_decl(ret_text + " _ret", defines).ctype
        params = [] if args.strip() in ("", "void") else [parse_decl(a, defines) for a in args.split(",")]
        prototypes[name] = Prototype(name, ret, params)
    called = re.findall(r"\b(tpde_\w+)\s*\(", rest)
    return Header(prototypes, structs, typedefs, defines, called)


H = parse_header(HEADER)


def test_the_header_parser_found_every_declaration() -> None:
    """Guards the tests below against a parser that silently skips a
    prototype or struct of a shape it does not know."""
    assert sorted(set(H.called_names)) == sorted(H.prototypes), "a tpde_*( in the header is not a parsed prototype"
    assert len(re.findall(r"\bstruct\b[^;{}]*\{", strip_comments(HEADER.read_text()))) == len(H.structs)
    # What the header is known to have had since ABI version 1.
    assert {"tpde_version", "tpde_encode", "tpde_decode", "tpde_bundle_decode"} <= set(H.prototypes)
    assert {"tpde_bundle_item", "tpde_bundle_out", "tpde_store_tensor", "tpde_store_span"} <= set(H.structs)
    assert H.defines["TPDE_OK"] == 0 and H.defines["TPDE_E_INVALID"] == 1
    for proto in H.prototypes.values():
        for p in proto.params:
            assert p.name, f"{proto.name}: unnamed parameter of type {p.ctype}"


# --- C types to ctypes -----------------------------------------------------


def structure_for(struct_name: str) -> type:
    """The ctypes Structure in _native that stands for a header struct: the
    one whose docstring reads 'struct <name>.', else the CamelCase of the
    name without tpde_ (tpde_frame_info -> FrameInfo)."""
    structures = [v for v in vars(_native).values()
                  if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == _native.__name__]
    by_doc = [s for s in structures if (s.__doc__ or "").strip().rstrip(".") == f"struct {struct_name}"]
    if len(by_doc) == 1:
        return by_doc[0]
    assert not by_doc, f"several Structures in _native claim struct {struct_name}: {by_doc}"
    camel = "".join(w.capitalize() for w in struct_name.removeprefix("tpde_").split("_"))
    cls = getattr(_native, camel, None)
    assert isinstance(cls, type) and issubclass(cls, ctypes.Structure), (
        f"no ctypes Structure for struct {struct_name} in python/tpde/_native.py"
        f" (expected one with docstring 'struct {struct_name}.' or named {camel})")
    return cls


def resolve(t: CType) -> CType:
    """Follow non-struct typedefs (typedef uint64_t tpde_handle;)."""
    seen = 0
    while t.base in H.typedefs and seen < 16:
        alias = H.typedefs[t.base]
        t = CType(alias.base, alias.pointers + t.pointers, t.array if t.array is not None else alias.array)
        seen += 1
    return t


def pointee(t: CType) -> type:
    """The ctypes type of what a one-level pointer points to."""
    if t.base in H.structs:
        return structure_for(t.base)
    assert t.base in SCALARS, f"no ctypes mapping for C type {t.base!r}"
    return SCALARS[t.base]


def allowed_ctypes(t: CType, param: str = "") -> List[Optional[type]]:
    """The ctypes types that pass (or return) C type t correctly, best first."""
    t = resolve(t)
    assert t.array is None, f"array parameter {t}"
    if t.pointers == 0:
        if t.base == "void":
            return [None]
        assert t.base not in H.structs, f"struct {t.base} passed by value: ctypes can, but _native never does"
        assert t.base in SCALARS, f"no ctypes mapping for C type {t.base!r}"
        return [SCALARS[t.base]]
    if t.pointers > 1:
        return [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    if t.base == "void":
        return [ctypes.c_void_p]
    if t.base == "char":
        # The per-thread error buffer is a char array passed as such.
        if param == "err":
            return [ctypes.POINTER(ctypes.c_char)]
        return [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char)]
    return [ctypes.POINTER(pointee(t))]


def type_name(t: Optional[type]) -> str:
    if t is None:
        return "None"
    if issubclass(t, ctypes._Pointer):
        return f"POINTER({type_name(t._type_)})"
    return t.__name__


# --- functions ---------------------------------------------------------------


FUNCTIONS = sorted(set(H.prototypes) | set(_native._SIGNATURES))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signature_matches_the_header(name: str) -> None:
    assert name in H.prototypes, f"_native._SIGNATURES has {name}, include/tpde.h declares no such function"
    assert name in _native._SIGNATURES, f"include/tpde.h declares {name}, _native._SIGNATURES has no entry"
    proto = H.prototypes[name]
    restype, argtypes = _native._SIGNATURES[name]
    ok = allowed_ctypes(proto.ret)
    assert restype in ok, (f"{name}: returns {proto.ret} in the header, restype is {type_name(restype)}"
                           f" (want {' or '.join(map(type_name, ok))})")
    c_params = ", ".join(map(str, proto.params))
    assert len(argtypes) == len(proto.params), (
        f"{name}: the header takes {len(proto.params)} arguments ({c_params}), argtypes has {len(argtypes)}:"
        f" {[type_name(a) for a in argtypes]}")
    for i, (p, a) in enumerate(zip(proto.params, argtypes)):
        ok = allowed_ctypes(p.ctype, p.name)
        assert a in ok, (f"{name}: argument {i} '{p}' is {type_name(a)} in argtypes"
                         f" (want {' or '.join(map(type_name, ok))})")


# --- constants and status codes ---------------------------------------------


def test_the_calls_that_keep_their_result_for_the_thread_are_those_the_header_says() -> None:
    """_native.call_json reads the document of a call on no handle with
    tpde_result(0, ...): the calls it does so for must be exactly those whose
    comment in the header says "Result, for this thread"."""
    raw = HEADER.read_text()
    said = set()
    for name in H.prototypes:
        at = re.search(rf"\b{name}\s*\(", raw).start()
        comment = re.sub(r"\n\s*\*(?!/)", " ", raw[:at].rsplit("/*", 1)[1])  # one line, without the " * "
        if "Result, for this thread" in " ".join(comment.split()):
            said.add(name)
    assert said, "no call of the header keeps its result for the thread"
    assert _native.THREAD_RESULTS == said


def test_abi_version_and_max_ndim_match_the_header() -> None:
    assert _native.ABI_VERSION == H.defines["TPDE_ABI_VERSION"]
    assert _native.MAX_NDIM == H.defines["TPDE_MAX_NDIM"]


def test_constants_named_like_the_header_have_its_values() -> None:
    """Any _native constant spelled like a header #define without TPDE_
    (OK, E_BUFFER_TOO_SMALL, ...) must have the same value."""
    shared = {name: value for name, value in H.defines.items()
              if name.startswith("TPDE_") and hasattr(_native, name[len("TPDE_"):])}
    assert "TPDE_OK" in shared and "TPDE_E_BUFFER_TOO_SMALL" in shared
    for name, value in shared.items():
        assert getattr(_native, name[len("TPDE_"):]) == value, f"_native.{name[5:]} != {name} ({value})"


STATUS = {name: value for name, value in H.defines.items() if name.startswith("TPDE_E_")}


def test_the_header_has_status_codes() -> None:
    assert len(STATUS) >= 7 and len(set(STATUS.values())) == len(STATUS), STATUS


@pytest.mark.parametrize("name", sorted(STATUS))
def test_status_code_maps_to_its_exception_class(name: str) -> None:
    code = STATUS[name]
    assert code in _native._ERRORS, f"{name} ({code}) has no exception class in _native._ERRORS"
    cls = _native._ERRORS[code]
    assert issubclass(cls, TPDEError), cls
    assert cls.status == code, f"{name} ({code}) maps to {cls.__name__}, whose status is {cls.status}"
    # error_for is what callers get: the class, not the unknown-status fallback.
    assert type(_native.error_for(code, b"msg", "f")) is cls


def test_every_mapped_status_is_a_header_code() -> None:
    extra = set(_native._ERRORS) - set(STATUS.values())
    assert not extra, f"_native._ERRORS maps {sorted(extra)}, which include/tpde.h does not define"


# --- structs -----------------------------------------------------------------


def field_ok(cls: type, f: Param, ctype: type) -> Tuple[bool, str]:
    """Whether ctypes field type `ctype` stands for C field f."""
    t = resolve(f.ctype)
    if t.array is not None:
        elem = CType(t.base, t.pointers)
        inner = getattr(ctype, "_type_", None)
        if getattr(ctype, "_length_", None) != t.array or inner is None:
            return False, f"want an array of {t.array}"
        return field_ok(cls, Param(f.name, elem), inner)
    if t.pointers:
        # _native passes raw addresses as c_void_p; anything typed must be the right type.
        ok = [ctypes.c_void_p] + allowed_ctypes(t)
    elif t.base in H.structs:
        ok = [structure_for(t.base)]
    else:
        ok = allowed_ctypes(t)
    return ctype in ok, f"want {' or '.join(map(type_name, ok))}"


@pytest.mark.parametrize("struct_name", sorted(H.structs))
def test_structure_fields_match_the_header(struct_name: str) -> None:
    cls = structure_for(struct_name)
    c_fields = H.structs[struct_name].fields
    py_fields = cls._fields_
    assert [f.name for f in c_fields] == [f[0] for f in py_fields], f"{cls.__name__} fields vs struct {struct_name}"
    for f, (_, ctype, *bits) in zip(c_fields, py_fields):
        assert not bits, f"{cls.__name__}.{f.name}: bit fields are not in the header"
        ok, want = field_ok(cls, f, ctype)
        assert ok, f"{cls.__name__}.{f.name} is {type_name(ctype)}, struct {struct_name} has '{f.ctype}': {want}"


def test_every_structure_in_native_is_a_header_struct() -> None:
    claimed = {structure_for(s) for s in H.structs}
    structures = {v for v in vars(_native).values()
                  if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == _native.__name__}
    assert not structures - claimed, f"Structures in _native with no struct in the header: {structures - claimed}"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """{struct: {"": (sizeof, _Alignof), field: (offsetof, sizeof)}} from the C compiler."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("cc is required (CI has it; the C ABI test uses it too)")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "tpde.h"', "int main(void) {"]
    for s in H.structs.values():
        lines.append(f'    printf("{s.name} - %zu %zu\\n", sizeof({s.name}), (size_t)_Alignof({s.name}));')
        for f in s.fields:
            lines.append(f'    printf("{s.name} {f.name} %zu %zu\\n", offsetof({s.name}, {f.name}),'
                         f" sizeof((({s.name} *)0)->{f.name}));")
    lines += ["    return 0;", "}"]
    tmp = tmp_path_factory.mktemp("abi_layout")
    src, exe = tmp / "layout.c", tmp / "layout"
    src.write_text("\n".join(lines) + "\n")
    build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'include'}", str(src),
                            "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, f"compiling the layout program failed:\n{build.stderr}\n{src.read_text()}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    layout: Dict[str, Dict[str, Tuple[int, int]]] = {}
    for line in out.splitlines():
        struct, name, a, b = line.split()
        layout.setdefault(struct, {})["" if name == "-" else name] = (int(a), int(b))
    return layout


@pytest.mark.parametrize("struct_name", sorted(H.structs))
def test_structure_layout_matches_the_c_compiler(struct_name: str, c_layout) -> None:
    cls = structure_for(struct_name)
    got = c_layout[struct_name]
    assert (ctypes.sizeof(cls), ctypes.alignment(cls)) == got[""], (
        f"{cls.__name__}: ctypes (sizeof, alignment) vs C for struct {struct_name}")
    assert set(got) - {""} == {f[0] for f in cls._fields_}, f"{cls.__name__} fields vs struct {struct_name}"
    for name, *_ in cls._fields_:
        desc = getattr(cls, name)
        assert (desc.offset, desc.size) == got[name], f"{cls.__name__}.{name}: ctypes (offset, size) vs C"
