#!/usr/bin/env python3
"""Import cycles between the top-level modules of src/ (issue 9: none allowed).

A top-level module is the first path segment under `crate::`
(`crate::metrics::store` is module `metrics`). Every .rs file under src/
belongs to the top-level module of its path (src/shm.rs and src/shm/x.rs are
`shm`; src/main.rs is the crate root, which no module can import). A file
depends on module M when its code (test code included; comments and string
literals excluded) names:

- `crate::M` or `$crate::M`, also inside `use crate::{M, ...}` groups;
- a `#[macro_export]` macro defined in M (`crate::log_info!` or a bare
  `log_info!`): macros land at the crate root, but their code is M's;
- `super::...::M` with enough `super`s to climb to the crate root (inline
  `mod x { ... }` blocks count as a level).

Prints every elementary cycle with, for each edge, the first place that
makes it, and exits 1; prints "no cycles" and exits 0 otherwise.

    scripts/module-cycles.py [--src DIR] [--graph] [--allow A,B ...]

--graph also prints every edge. --allow A,B (repeatable) tolerates the
cycles whose modules are exactly {A, B}: they are still printed, marked as
allowed, but do not fail the run (for a cycle being removed on another
branch; drop the flag once it is gone).
"""

import argparse
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text):
    """The text with comments, string and char literals blanked out (same
    length and line breaks, so offsets still map to lines)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif c == "/" and nxt == "*":
            # Block comments nest in Rust.
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif c == "r" or (c == "b" and nxt == "r"):
            # Raw strings: r"..", r#".."#, br#".."# (not part of an identifier).
            m = re.compile(r'b?r(#*)"').match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                end = text.find('"' + m.group(1), m.end())
                j = n if end < 0 else end + 1 + len(m.group(1))
                out.append(blank(text[i:j]))
                i = j
            else:
                out.append(c)
                i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(blank(text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}', '\''), else a lifetime.
            if nxt == "\\":
                j = i + 2
                while j < n and text[j] != "'":
                    j += 2 if text[j] == "\\" else 1
                j = min(j + 1, n)
            elif i + 2 < n and text[i + 2] == "'":
                j = i + 3
            else:
                j = i + 1
            out.append(blank(text[i:j]) if j > i + 1 else c)
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def top_modules(src):
    """Names declared as top-level modules: src/NAME.rs or src/NAME/mod.rs."""
    mods = set()
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name.endswith(".rs") and name not in ("main.rs", "lib.rs"):
            mods.add(name[:-3])
        elif os.path.isfile(os.path.join(path, "mod.rs")):
            mods.add(name)
    return mods


def file_module(src, path):
    """(top-level module, depth below the crate root) of a file, or None for
    the crate root."""
    rel = os.path.relpath(path, src).split(os.sep)
    if rel in (["main.rs"], ["lib.rs"]):
        return None
    if rel[-1] == "mod.rs":
        rel = rel[:-1]
    else:
        rel[-1] = rel[-1][:-3]
    return rel[0], len(rel)


def inline_mod_spans(code):
    """(start, end) of every inline `mod name { ... }` body."""
    spans = []
    for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{", code):
        depth, j = 0, m.end() - 1
        while j < len(code):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        spans.append((m.end(), j))
    return spans


def group_heads(code, start):
    """First identifiers of the items of a `{ ... }` group opening at
    `start`, e.g. `{a::b, c, d::{e}}` -> a, c, d."""
    heads, depth, j, item_start = [], 0, start, start + 1
    while j < len(code):
        ch = code[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if (ch == "," and depth == 1) or depth == 0:
            m = re.match(r"\s*(" + IDENT + ")", code[item_start:j])
            if m:
                heads.append((m.group(1), item_start + m.start(1)))
            item_start = j + 1
            if depth == 0:
                break
        j += 1
    return heads


def scan(src):
    mods = top_modules(src)
    files = []
    for root, _, names in os.walk(src):
        for name in sorted(names):
            if name.endswith(".rs"):
                files.append(os.path.join(root, name))
    files.sort()
    codes = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            codes[path] = strip_code(f.read())

    # #[macro_export] macros belong to the module that defines them.
    macros = {}
    for path, code in codes.items():
        fm = file_module(src, path)
        if fm is None:
            continue
        for m in re.finditer(r"#\s*\[\s*macro_export[^\]]*\]\s*macro_rules!\s*(" + IDENT + ")", code):
            macros[m.group(1)] = fm[0]

    edges = {}  # (from, to) -> "path:line"

    def add(frm, to, path, code, pos):
        if to is None or to == frm:
            return
        where = "%s:%d" % (os.path.relpath(path), code.count("\n", 0, pos) + 1)
        edges.setdefault((frm, to), where)

    def target(name):
        if name in mods:
            return name
        return macros.get(name)

    for path, code in codes.items():
        fm = file_module(src, path)
        if fm is None:
            continue
        me, depth = fm
        for m in re.finditer(r"(?<![A-Za-z0-9_])\$?crate\s*::\s*", code):
            rest = code[m.end():]
            if rest.startswith("{"):
                for head, pos in group_heads(code, m.end()):
                    add(me, target(head), path, code, pos)
            else:
                h = re.match(IDENT, rest)
                if h:
                    add(me, target(h.group(0)), path, code, m.end())
        for name in macros:
            for m in re.finditer(r"(?<![A-Za-z0-9_:$])" + name + r"\s*!", code):
                add(me, macros[name], path, code, m.start())
        spans = inline_mod_spans(code)
        for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:super\s*::\s*)+)", code):
            ups = m.group(1).count("super")
            here = depth + sum(1 for a, b in spans if a <= m.start() < b)
            if ups < here:
                continue  # stays inside this top-level module
            if ups > here:
                continue  # not valid Rust; the compiler rejects it
            rest = code[m.end():]
            if rest.startswith("{"):
                for head, pos in group_heads(code, m.end()):
                    add(me, target(head), path, code, pos)
            else:
                h = re.match(IDENT, rest)
                if h:
                    add(me, target(h.group(0)), path, code, m.end())
    return mods, edges


def cycles(nodes, edges, limit=1000):
    """Elementary cycles, each listed once starting from its smallest node."""
    succ = {n: sorted(b for (a, b) in edges if a == n) for n in nodes}
    found = []
    for start in sorted(nodes):
        stack = [(start, iter(succ[start]))]
        path = [start]
        on_path = {start}
        while stack and len(found) < limit:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
            elif nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in on_path:
                path.append(nxt)
                on_path.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    return found


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(here, "..", "src"))
    ap.add_argument("--graph", action="store_true", help="print every edge")
    ap.add_argument("--allow", action="append", default=[], metavar="A,B",
                    help="tolerate the cycles whose modules are exactly these")
    args = ap.parse_args()
    src = os.path.normpath(args.src)
    mods, edges = scan(src)
    if args.graph:
        for (a, b), where in sorted(edges.items()):
            print("%s -> %s  (%s)" % (a, b, where))
    allowed = [frozenset(x.split(",")) for x in args.allow]
    failing = tolerated = 0
    for cyc in cycles(mods, edges):
        ok = frozenset(cyc) in allowed
        failing += 0 if ok else 1
        tolerated += 1 if ok else 0
        print("%scycle: %s" % ("allowed " if ok else "", " -> ".join(cyc)))
        for a, b in zip(cyc, cyc[1:]):
            print("    %s -> %s: %s" % (a, b, edges[(a, b)]))
    if failing:
        return 1
    print("no cycles besides the %d allowed above" % tolerated if tolerated else "no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
