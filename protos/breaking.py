"""Check the .proto files against the last released contract: no breaking changes.

Run: python protos/breaking.py                      (current protos vs the newest
                                                      protos/released/<version>.binpb)
     python protos/breaking.py --against FILE.binpb  (vs a given descriptor set)
     python protos/breaking.py --release [VERSION]   (at a release: write
                                                      protos/released/<VERSION>.binpb,
                                                      VERSION defaulting to
                                                      recall_engine.__version__)

The released contracts are FileDescriptorSets (what ``buf build -o x.binpb`` writes, so
``buf breaking protos --against protos/released/0.1.0.binpb`` reads them too). The rules
are buf's, named by buf's rule ids, following ``buf.yaml``: the FILE category, except
that a field or enum value may be deleted once its number and name are reserved. Exit
status 1 and one line per finding when something breaks:

- files: FILE_NO_DELETE, FILE_SAME_PACKAGE, FILE_SAME_SYNTAX, FILE_SAME_<OPTION> for
  the language options (go_package, java_package, java_multiple_files, ...);
- messages, enums, services: MESSAGE_NO_DELETE, ENUM_NO_DELETE, SERVICE_NO_DELETE (a
  rename or a move to another file is a delete here);
- fields: FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED / _NAME_RESERVED (a changed number is
  a delete of the old one), FIELD_SAME_NAME, FIELD_SAME_JSON_NAME, FIELD_SAME_TYPE,
  FIELD_SAME_CARDINALITY (repeated, optional), FIELD_SAME_ONEOF;
- enum values: ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED / _NAME_RESERVED,
  ENUM_VALUE_SAME_NAME;
- reservations: RESERVED_MESSAGE_NO_DELETE, RESERVED_ENUM_NO_DELETE;
- methods: RPC_NO_DELETE, RPC_SAME_REQUEST_TYPE, RPC_SAME_RESPONSE_TYPE,
  RPC_SAME_CLIENT_STREAMING, RPC_SAME_SERVER_STREAMING, RPC_SAME_IDEMPOTENCY_LEVEL.

Additions (files, messages, fields, enum values, services, methods) never break.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2 as d

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
RELEASED = PROTO_ROOT / "released"

FieldD = d.FieldDescriptorProto

#: File options whose change moves or renames generated code in some language.
FILE_OPTIONS = (
    "go_package",
    "java_package",
    "java_multiple_files",
    "java_outer_classname",
    "csharp_namespace",
    "objc_class_prefix",
    "php_namespace",
    "php_metadata_namespace",
    "ruby_package",
    "swift_prefix",
    "optimize_for",
    "cc_enable_arenas",
)


@dataclass(slots=True, frozen=True, order=True)
class Finding:
    file: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.rule}: {self.message}"


# -- descriptors ---------------------------------------------------------------------


def compile_protos(proto_root: Path) -> d.FileDescriptorSet:
    """Every .proto under ``proto_root`` compiled by grpc_tools' protoc."""
    from importlib.resources import files

    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = [
            "protoc",
            f"-I{proto_root}",
            f"-I{files('grpc_tools') / '_proto'}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_root}")
        fds = d.FileDescriptorSet.FromString(out.read_bytes())
    own = set(protos)  # well-known imports (google/protobuf/...) are not ours to check
    keep = [f for f in fds.file if f.name in own]
    del fds.file[:]
    fds.file.extend(keep)
    return fds


def load(path: Path) -> d.FileDescriptorSet:
    return d.FileDescriptorSet.FromString(path.read_bytes())


def _version_key(path: Path) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-+]", path.stem))


def latest_release(folder: Path = RELEASED) -> Path:
    found = sorted(folder.glob("*.binpb"), key=_version_key)
    if not found:
        raise SystemExit(f"no released contract in {folder}; run with --release first")
    return found[-1]


def package_version() -> str:
    text = (ROOT / "engine" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("no __version__ in engine/__init__.py")
    return match.group(1)


# -- the comparison ------------------------------------------------------------------


def breaking_changes(old: d.FileDescriptorSet, new: d.FileDescriptorSet) -> list[Finding]:
    """What in ``new`` breaks users of ``old``, sorted by file and rule."""
    found: list[Finding] = []
    new_files = {f.name: f for f in new.file}
    new_messages = {n: (f, m) for f in new.file for n, m in _messages(f)}
    new_enums = {n: (f, e) for f in new.file for n, e in _enums(f)}
    new_services = {f"{_prefix(f)}{s.name}": (f, s) for f in new.file for s in f.service}
    for of in old.file:
        nf = new_files.get(of.name)
        if nf is None:
            found.append(Finding(of.name, "FILE_NO_DELETE", "file was deleted"))
            continue
        found += _compare_files(of, nf)
        for name, om in _messages(of):
            where, nm = new_messages.get(name, (None, None))
            if nm is None or where.name != nf.name:
                found.append(Finding(of.name, "MESSAGE_NO_DELETE", _gone("message", name, where)))
            if nm is not None:
                found += _compare_messages(of.name, name, om, nm)
        for name, oe in _enums(of):
            where, ne = new_enums.get(name, (None, None))
            if ne is None or where.name != nf.name:
                found.append(Finding(of.name, "ENUM_NO_DELETE", _gone("enum", name, where)))
            if ne is not None:
                found += _compare_enums(of.name, name, oe, ne)
        for os_ in of.service:
            name = f"{_prefix(of)}{os_.name}"
            where, ns = new_services.get(name, (None, None))
            if ns is None or where.name != nf.name:
                found.append(Finding(of.name, "SERVICE_NO_DELETE", _gone("service", name, where)))
            if ns is not None:
                found += _compare_services(of.name, name, os_, ns)
    return sorted(found)


def _gone(kind: str, name: str, moved_to: d.FileDescriptorProto | None) -> str:
    if moved_to is not None:
        return f'{kind} "{name}" moved to {moved_to.name}'
    return f'{kind} "{name}" was deleted (or renamed)'


def _prefix(f: d.FileDescriptorProto) -> str:
    return f"{f.package}." if f.package else ""


def _messages(f: d.FileDescriptorProto) -> Iterator[tuple[str, d.DescriptorProto]]:
    def walk(prefix: str, msgs: Sequence[d.DescriptorProto]) -> Iterator:
        for m in msgs:
            name = f"{prefix}{m.name}"
            yield name, m
            yield from walk(f"{name}.", m.nested_type)

    yield from walk(_prefix(f), f.message_type)


def _enums(f: d.FileDescriptorProto) -> Iterator[tuple[str, d.EnumDescriptorProto]]:
    for e in f.enum_type:
        yield f"{_prefix(f)}{e.name}", e
    for name, m in _messages(f):
        for e in m.enum_type:
            yield f"{name}.{e.name}", e


def _compare_files(of: d.FileDescriptorProto, nf: d.FileDescriptorProto) -> list[Finding]:
    found = []
    if of.package != nf.package:
        found.append(
            Finding(of.name, "FILE_SAME_PACKAGE", f'package "{of.package}" -> "{nf.package}"')
        )
    if (of.syntax or "proto2") != (nf.syntax or "proto2"):
        found.append(Finding(of.name, "FILE_SAME_SYNTAX", f"syntax {of.syntax} -> {nf.syntax}"))
    for option in FILE_OPTIONS:
        was, now = getattr(of.options, option), getattr(nf.options, option)
        if was != now:
            rule = f"FILE_SAME_{option.upper()}"
            found.append(Finding(of.name, rule, f"option {option} {was!r} -> {now!r}"))
    return found


def _type_of(f: d.FieldDescriptorProto) -> str:
    if f.type in (FieldD.TYPE_MESSAGE, FieldD.TYPE_ENUM, FieldD.TYPE_GROUP):
        return f.type_name.lstrip(".")
    return FieldD.Type.Name(f.type).removeprefix("TYPE_").lower()


def _cardinality(f: d.FieldDescriptorProto) -> str:
    if f.label == FieldD.LABEL_REPEATED:
        return "repeated"
    if f.label == FieldD.LABEL_REQUIRED:
        return "required"
    return "optional" if f.proto3_optional or f.HasField("oneof_index") else "singular"


def _oneof(m: d.DescriptorProto, f: d.FieldDescriptorProto) -> str:
    if not f.HasField("oneof_index") or f.proto3_optional:  # a synthetic oneof is no oneof
        return "(none)"
    return m.oneof_decl[f.oneof_index].name


def _covered(number: int, ranges: Sequence, end_inclusive: bool) -> bool:
    return any(r.start <= number < r.end + end_inclusive for r in ranges)


def _compare_messages(
    file: str, name: str, om: d.DescriptorProto, nm: d.DescriptorProto
) -> list[Finding]:
    found = []
    new_by_number = {f.number: f for f in nm.field}
    new_by_name = {f.name: f for f in nm.field}
    for of in om.field:
        where = f'field "{of.name}" ({of.number}) of message "{name}"'
        nf = new_by_number.get(of.number)
        if nf is None:
            moved = new_by_name.get(of.name)
            now = f", now number {moved.number}" if moved is not None else ""
            if not _covered(of.number, nm.reserved_range, end_inclusive=False):
                found.append(
                    Finding(
                        file,
                        "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
                        f"{where} was deleted without reserving its number{now}",
                    )
                )
            if moved is None and of.name not in nm.reserved_name:
                found.append(
                    Finding(
                        file,
                        "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
                        f"{where} was deleted without reserving its name",
                    )
                )
            continue
        pairs = (
            ("FIELD_SAME_NAME", "name", of.name, nf.name),
            ("FIELD_SAME_JSON_NAME", "json name", of.json_name, nf.json_name),
            ("FIELD_SAME_TYPE", "type", _type_of(of), _type_of(nf)),
            ("FIELD_SAME_CARDINALITY", "cardinality", _cardinality(of), _cardinality(nf)),
            ("FIELD_SAME_ONEOF", "oneof", _oneof(om, of), _oneof(nm, nf)),
        )
        for rule, what, was, now in pairs:
            if was != now:
                found.append(Finding(file, rule, f"{where} changed {what} from {was} to {now}"))
    found += _reservations(file, f'message "{name}"', om, nm, "RESERVED_MESSAGE_NO_DELETE", False)
    return found


def _compare_enums(
    file: str, name: str, oe: d.EnumDescriptorProto, ne: d.EnumDescriptorProto
) -> list[Finding]:
    found = []
    new_by_number = {v.number: v for v in ne.value}
    new_names = {v.name for v in ne.value}
    for ov in oe.value:
        where = f'enum value "{ov.name}" ({ov.number}) of enum "{name}"'
        nv = new_by_number.get(ov.number)
        if nv is None:
            if not _covered(ov.number, ne.reserved_range, end_inclusive=True):
                found.append(
                    Finding(
                        file,
                        "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
                        f"{where} was deleted without reserving its number",
                    )
                )
            if ov.name not in new_names and ov.name not in ne.reserved_name:
                found.append(
                    Finding(
                        file,
                        "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED",
                        f"{where} was deleted without reserving its name",
                    )
                )
        elif not any(v.name == ov.name and v.number == ov.number for v in ne.value):
            found.append(
                Finding(file, "ENUM_VALUE_SAME_NAME", f'{where} was renamed to "{nv.name}"')
            )
    found += _reservations(file, f'enum "{name}"', oe, ne, "RESERVED_ENUM_NO_DELETE", True)
    return found


def _reservations(file: str, where: str, old, new, rule: str, inclusive: bool) -> list[Finding]:
    """Every number and name ``old`` reserved is still reserved in ``new``."""
    found = []
    for r in old.reserved_range:
        end = r.end + 1 if inclusive else r.end
        if not _range_covered(r.start, end, new.reserved_range, inclusive):
            shown = f"{r.start}" if end - r.start == 1 else f"{r.start} to {end - 1}"
            found.append(Finding(file, rule, f"{where} no longer reserves {shown}"))
    for n in old.reserved_name:
        if n not in new.reserved_name:
            found.append(Finding(file, rule, f'{where} no longer reserves the name "{n}"'))
    return found


def _range_covered(start: int, end: int, ranges: Sequence, inclusive: bool) -> bool:
    """[start, end) lies within the union of ``ranges``."""
    spans = sorted((r.start, r.end + 1 if inclusive else r.end) for r in ranges)
    at = start
    for s, e in spans:
        if s > at:
            break
        at = max(at, e)
        if at >= end:
            return True
    return at >= end


def _compare_services(
    file: str, name: str, os_: d.ServiceDescriptorProto, ns: d.ServiceDescriptorProto
) -> list[Finding]:
    found = []
    new_methods = {m.name: m for m in ns.method}
    for om in os_.method:
        where = f'method "{om.name}" of service "{name}"'
        nm = new_methods.get(om.name)
        if nm is None:
            found.append(Finding(file, "RPC_NO_DELETE", f"{where} was deleted (or renamed)"))
            continue
        pairs = (
            ("RPC_SAME_REQUEST_TYPE", "request type", om.input_type, nm.input_type),
            ("RPC_SAME_RESPONSE_TYPE", "response type", om.output_type, nm.output_type),
            (
                "RPC_SAME_CLIENT_STREAMING",
                "client streaming",
                om.client_streaming,
                nm.client_streaming,
            ),
            (
                "RPC_SAME_SERVER_STREAMING",
                "server streaming",
                om.server_streaming,
                nm.server_streaming,
            ),
            (
                "RPC_SAME_IDEMPOTENCY_LEVEL",
                "idempotency level",
                om.options.idempotency_level,
                nm.options.idempotency_level,
            ),
        )
        for rule, what, was, now in pairs:
            if was != now:
                shown = (str(was).lstrip("."), str(now).lstrip("."))
                found.append(
                    Finding(file, rule, f"{where} changed {what} from {shown[0]} to {shown[1]}")
                )
    return found


# -- command line --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="the .proto tree")
    parser.add_argument("--against", type=Path, help="a released FileDescriptorSet (.binpb)")
    parser.add_argument(
        "--release",
        nargs="?",
        const="",
        metavar="VERSION",
        help="write the current contract as protos/released/VERSION.binpb",
    )
    ns = parser.parse_args(argv)
    current = compile_protos(ns.protos)
    if ns.release is not None:
        version = ns.release or package_version()
        out = RELEASED / f"{version}.binpb"
        if out.exists():
            print(f"{out.relative_to(ROOT)} exists; a released contract is never rewritten")
            return 1
        RELEASED.mkdir(parents=True, exist_ok=True)
        out.write_bytes(current.SerializeToString(deterministic=True))
        print(f"wrote {out.relative_to(ROOT)}")
        return 0
    against = ns.against or latest_release()
    findings = breaking_changes(load(against), current)
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} breaking change(s) against {against.name}")
        return 1
    print(f"no breaking changes against {against.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
