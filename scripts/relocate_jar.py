#!/usr/bin/env python3
"""Relocates Java packages: copies jars into one jar, moving every class (and every reference to
it) from one package prefix to another — what Maven's shade plugin does, for the one case the
tests need.

Iceberg's Spark runtime jar refers to Jackson as `org.apache.iceberg.shaded.com.fasterxml.jackson`
and to Apache HttpClient 5 as `org.apache.iceberg.shaded.org.apache.hc`, but contains neither.
This builds the missing jars: Jackson from pyspark's own jars, HttpClient from Debian's.

What is rewritten, from `--from` to `--to` (slashed and dotted forms both):
  - entry paths (`com/fasterxml/jackson/core/JsonFactory.class`, also under
    `META-INF/versions/N/`);
  - the UTF-8 strings of each class file's constant pool: class names, descriptors, signatures
    and string literals (Jackson finds some of its classes by name, as dotted strings);
  - `META-INF/services/` file names and contents.
Everything else in a class file is copied byte for byte. `module-info.class` files are dropped:
the relocated packages would no longer match the module's declarations, and the jar is only
ever used on the class path.

usage: relocate_jar.py --from com/fasterxml/jackson \
           --to org/apache/iceberg/shaded/com/fasterxml/jackson OUT.jar IN.jar [IN.jar ...]
"""

import argparse
import re
import struct
import sys
import zipfile

# Constant pool tags (JVM specification, section 4.4) and the size of each entry's body.
UTF8 = 1
FIXED_SIZE = {
    3: 4,  # Integer
    4: 4,  # Float
    5: 8,  # Long: takes two slots
    6: 8,  # Double: takes two slots
    7: 2,  # Class
    8: 2,  # String
    9: 4,  # Fieldref
    10: 4,  # Methodref
    11: 4,  # InterfaceMethodref
    12: 4,  # NameAndType
    15: 3,  # MethodHandle
    16: 2,  # MethodType
    17: 4,  # Dynamic
    18: 4,  # InvokeDynamic
    19: 2,  # Module
    20: 2,  # Package
}
TWO_SLOTS = {5, 6}
MAGIC = 0xCAFEBABE


class Relocator:
    """Rewrites `old` to `new` in slashed and dotted names, never twice."""

    def __init__(self, old: str, new: str):
        self.pairs = []
        for sep in ("/", "."):
            o, n = old.replace("/", sep), new.replace("/", sep)
            # a name already under the new prefix ends with the old one: leave it alone
            already = re.escape(n[: len(n) - len(o)])
            pattern = re.compile(rb"(?<!" + already.encode() + rb")" + re.escape(o.encode()))
            self.pairs.append((pattern, n.encode()))

    def bytes(self, data: bytes) -> bytes:
        # Byte-level rewriting is sound on modified UTF-8: its ASCII characters are single
        # bytes below 0x80, and every byte of a multi-byte sequence has its high bit set, so an
        # ASCII pattern can only match whole characters.
        for pattern, replacement in self.pairs:
            data = pattern.sub(replacement, data)
        return data

    def text(self, name: str) -> str:
        return self.bytes(name.encode("utf-8")).decode("utf-8")


def relocate_class(data: bytes, relocator: Relocator, name: str) -> bytes:
    """Rewrites the UTF-8 entries of a class file's constant pool; the rest is copied."""
    if len(data) < 10 or struct.unpack_from(">I", data, 0)[0] != MAGIC:
        raise ValueError(f"{name}: not a class file")
    (count,) = struct.unpack_from(">H", data, 8)
    out = bytearray(data[:10])
    pos = 10
    index = 1
    while index < count:
        tag = data[pos]
        if tag == UTF8:
            (length,) = struct.unpack_from(">H", data, pos + 1)
            value = relocator.bytes(data[pos + 3 : pos + 3 + length])
            if len(value) > 0xFFFF:
                raise ValueError(f"{name}: constant #{index} is too long once relocated")
            out += struct.pack(">BH", UTF8, len(value)) + value
            pos += 3 + length
            index += 1
        elif tag in FIXED_SIZE:
            size = 1 + FIXED_SIZE[tag]
            out += data[pos : pos + size]
            pos += size
            index += 2 if tag in TWO_SLOTS else 1
        else:
            raise ValueError(f"{name}: unknown constant pool tag {tag} at entry #{index}")
    out += data[pos:]
    return bytes(out)


def relocate(inputs, output, relocator: Relocator) -> int:
    """Writes every input's entries, relocated, into `output`; returns the classes written."""
    seen = set()
    classes = 0
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as out:
        # Our own manifest: the inputs' manifests describe jars (OSGi bundles, modules) that
        # this one is not. Multi-Release keeps jackson-core's versioned classes in use.
        out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nMulti-Release: true\n")
        seen.add("META-INF/MANIFEST.MF")
        for path in inputs:
            stem = path.rsplit("/", 1)[-1].removesuffix(".jar")
            with zipfile.ZipFile(path) as jar:
                for info in jar.infolist():
                    name = info.filename
                    if info.is_dir() or name == "META-INF/MANIFEST.MF":
                        continue
                    if name.endswith("module-info.class"):
                        continue
                    data = jar.read(info)
                    if name.endswith(".class"):
                        data = relocate_class(data, relocator, f"{path}!{name}")
                        classes += 1
                    elif name.startswith("META-INF/services/"):
                        data = relocator.bytes(data)
                    elif name.startswith("META-INF/") and "/" not in name[len("META-INF/") :]:
                        # LICENSE and NOTICE files: each jar's own, side by side
                        name = f"META-INF/{stem}/{name[len('META-INF/'):]}"
                    new_name = relocator.text(name)
                    if new_name in seen:
                        if new_name.startswith("META-INF/services/"):
                            raise ValueError(f"two inputs declare the service {new_name}")
                        continue
                    seen.add(new_name)
                    out.writestr(zipfile.ZipInfo(new_name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                                 compress_type=zipfile.ZIP_DEFLATED)
    return classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="old", required=True, help="package prefix, slashed")
    parser.add_argument("--to", dest="new", required=True, help="new package prefix, slashed")
    parser.add_argument("output")
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args()
    classes = relocate(args.inputs, args.output, Relocator(args.old, args.new))
    print(f"relocate_jar: {classes} classes from {len(args.inputs)} jars into {args.output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
