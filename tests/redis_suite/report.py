"""Helpers for tests/redis_suite/run: skip-list parsing and result counting.

    report.py skiplist SKIPLIST OUT_SKIPFILE      validate, write a runtest --skipfile,
                                                  print the --tags value
    report.py unit-line UNIT LOG SECONDS          one progress line per unit
    report.py summary --log-dir D ... --units U.. the final report and exit status
    report.py failures --log-dir D ... --units U.. markdown draft of each failure
    report.py check-needs --host H --port P SKIPLIST  warn about skips the server outgrew

The runtest output (ANSI colours stripped) has one line per test:
    [ok]: NAME (N ms)        [skip]: NAME        [ignore]: NAME: Tag: x denied
    [err]: NAME in tests/unit/X.tcl   followed by detail lines
A block that aborts outside a test prints an [err] whose first line does not name a
test; the tests after it in that block never run. Such tests are found by comparing
with expected-tests.txt (the tests that run against redis-server with this skip list)
and are counted as failed ("not run").
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

STATUS_RE = re.compile(r"^\[(ok|err|skip|ignore|exception|TIMEOUT|server-died|server-down)\]: ?(.*)$")
DONE_RE = re.compile(r"^\[\d+/\d+ done\]: ")
OK_RE = re.compile(r"^(.*) \(\d+ ms\)$")
ERR_NAME_RE = re.compile(r"^(.*) in (tests/\S+\.tcl)$")
BLOCK_IGNORE_PREFIXES = ("Tag: ", "Not supported", "large memory flag")


# ----------------------------------------------------------------------------- skip list
def parse_skiplist(path: str):
    """Return (tags, names_and_regexes, errors). Each entry needs a reason comment."""
    tags, entries, errors = [], [], []
    have_reason = False
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip()
            if not line.strip():
                have_reason = False
                continue
            if line.startswith("#"):
                if line.lstrip("#").strip():
                    have_reason = True
                continue
            if not have_reason:
                errors.append(f"{path}:{lineno}: entry without a reason comment: {line}")
            if line.startswith("tag:"):
                tags.append(line[4:].strip())
            else:
                entries.append(line)
    return tags, entries, errors


def cmd_skiplist(args) -> int:
    tags, entries, errors = parse_skiplist(args.skiplist)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    with open(args.out, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(e + "\n")
    print(" ".join("-" + t for t in tags))
    return 0


def skiplist_needs(path: str):
    """[(commands named on a '# needs commands:' line, entries of that paragraph)]."""
    out, needs, entries = [], [], []
    with open(path, encoding="utf-8") as f:
        for raw in list(f) + [""]:
            line = raw.strip()
            if not line:
                if needs:
                    out.append((needs, entries))
                needs, entries = [], []
            elif line.startswith("#"):
                m = re.match(r"#\s*needs commands:\s*(.*)$", line)
                if m:
                    needs += m.group(1).split()
            else:
                entries.append(line)
    return out


def resp_command(host: str, port: int, *args: str, timeout: float = 5.0):
    """Send one command, return the parsed RESP2 reply (errors as Exception objects)."""
    import socket
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
        f = sock.makefile("rb")

        def read():
            line = f.readline()
            if not line:
                raise ConnectionError("connection closed")
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                return Exception(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise ValueError(f"unexpected reply {line!r}")
        return read()
    finally:
        sock.close()


def cmd_check_needs(args) -> int:
    """Warn about skip-list paragraphs whose commands the server now has."""
    paragraphs = skiplist_needs(args.skiplist)
    wanted = sorted({c for needs, _ in paragraphs for c in needs})
    try:
        reply = resp_command(args.host, args.port, "COMMAND", "INFO", *wanted)
    except (OSError, ValueError) as e:
        print(f"   (could not check the skip list against the server's commands: {e})")
        return 0
    if not isinstance(reply, list) or len(reply) != len(wanted):
        print(f"   (COMMAND INFO gave an unexpected reply; skip list not checked: {reply!r:.100})")
        return 0
    have = {c for c, info in zip(wanted, reply) if info}
    for needs, entries in paragraphs:
        present = [c for c in needs if c in have]
        if present:
            shown = "; ".join(entries[:3]) + (f"; ... ({len(entries) - 3} more)" if len(entries) > 3 else "")
            print(f"!! skiplist.txt: the server now has {' '.join(present)}; revisit these skips: {shown}")
    return 0


# ----------------------------------------------------------------------------- parsing
class UnitResult:
    def __init__(self, unit: str):
        self.unit = unit
        self.ok: list[str] = []
        self.err: list[tuple[str, list[str]]] = []  # (name, detail lines)
        self.skip: list[str] = []
        self.ignore: list[str] = []  # test-level tag/mode exclusions
        self.block_ignore: list[str] = []
        self.block_err: list[list[str]] = []  # block aborted outside a test
        self.events: list[str] = []  # TIMEOUT, exception, server died
        self.done = False


def parse_log(unit: str, path: str) -> UnitResult:
    res = UnitResult(unit)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        res.events.append("no output (runtest did not run)")
        return res
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if DONE_RE.match(line):
            res.done = True
            continue
        if line.startswith("The End"):
            break  # the closing recap repeats every [err]
        m = STATUS_RE.match(line)
        if not m:
            continue
        status, data = m.group(1), m.group(2)
        if status == "ok":
            mm = OK_RE.match(data)
            res.ok.append(mm.group(1) if mm else data)
        elif status == "skip":
            res.skip.append(data)
        elif status == "ignore":
            if data.startswith(BLOCK_IGNORE_PREFIXES):
                res.block_ignore.append(data)
            else:
                name = re.sub(r": (Tag: .*|Not supported.*|large memory flag.*)$", "", data)
                res.ignore.append(name)
        elif status == "err":
            detail = []
            while i < len(lines) and not STATUS_RE.match(lines[i]) and not DONE_RE.match(lines[i]) \
                    and not lines[i].startswith(("Testing ", "The End")):
                detail.append(lines[i])
                i += 1
            while detail and not detail[-1].strip():
                detail.pop()
            mm = ERR_NAME_RE.match(data)
            if mm:
                res.err.append((mm.group(1), detail))
            else:
                res.block_err.append([data] + detail)
        elif status in ("TIMEOUT", "exception"):
            res.events.append(f"[{status}] {data}")
        else:
            res.events.append(f"[{status}] {data}")
    if not res.done and not any(e.startswith("[TIMEOUT]") for e in res.events):
        res.events.append("runtest ended before the unit finished")
    return res


# ----------------------------------------------------------------------------- locations
_TEST_DEF_RE = re.compile(r"""^\s*test\s+(\{[^}]*\}|"[^"]*"|\S+)""")


def test_locations(src: str, unit: str):
    """[(regex of the test name, 'tests/unit/x.tcl:LINE', whether the name has variables)]."""
    rel = f"tests/{unit}.tcl"
    out = []
    try:
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                m = _TEST_DEF_RE.match(line)
                if not m:
                    continue
                tmpl = m.group(1)
                if tmpl[0] == "{":  # braces: literal name
                    parts = [tmpl[1:-1]]
                else:  # quotes or a bare word: $var and [cmd] are substituted
                    tmpl = tmpl[1:-1] if tmpl[0] == '"' else tmpl
                    parts = re.split(r"(\$\{?\w+\}?|\[[^\]]*\])", tmpl)
                rx = "".join(".*" if p.startswith(("$", "[")) else re.escape(p) for p in parts)
                out.append((re.compile("^" + rx + "$"), f"{rel}:{n}", len(parts) > 1))
    except FileNotFoundError:
        pass
    return out


def locate(locs, name: str) -> str:
    """Where the test is defined: a literal name first, then a name built from variables."""
    for templated in (False, True):
        for rx, where, is_template in locs:
            if is_template == templated and rx.match(name):
                return where
    return "?"


# ----------------------------------------------------------------------------- commands
def cmd_unit_line(args) -> int:
    r = parse_log(args.unit, args.log)
    skipped = len(r.skip) + len(r.ignore)
    print(f"   {args.unit:<18} {len(r.ok):4d} ok {len(r.err):4d} err {skipped:4d} skipped"
          f"  ({args.seconds} s)" + (f"  BLOCK ABORTED x{len(r.block_err)}" if r.block_err else "")
          + ("  " + "; ".join(r.events) if r.events else ""))
    for name, detail in r.err:
        first = next((d.strip() for d in detail if d.strip()), "")
        print(f"      [err] {name}: {first[:200]}")
    for blk in r.block_err:
        print(f"      [block aborted] {' '.join(x.strip() for x in blk[:2])[:200]}")
    return 0


def read_expected(path: str):
    exp = collections.defaultdict(collections.Counter)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            unit, _, name = line.partition("\t")
            exp[unit][name] += 1
    return exp


def cmd_summary(args) -> int:
    results = [parse_log(u, os.path.join(args.log_dir, u.replace("/", "_") + ".log")) for u in args.units]
    expected = None if args.no_expected else read_expected(args.expected)
    tags, entries, _ = parse_skiplist(args.skiplist)

    total_ok = total_fail = total_skip = 0
    rows, failures, not_run_all, unexpected_all, block_errs, events = [], [], [], [], [], []
    seen_skips = collections.Counter()
    for r in results:
        locs = test_locations(args.src, r.unit)
        ran = collections.Counter(r.ok) + collections.Counter(n for n, _ in r.err)
        not_run = []
        if expected is not None:
            exp = expected.get(r.unit, collections.Counter())
            not_run = sorted((exp - ran).elements())
            unexpected = sorted((ran - exp).elements())
            unexpected_all += [(r.unit, n) for n in unexpected]
        n_ok, n_fail = len(r.ok), len(r.err) + len(not_run)
        n_skip = len(r.skip) + len(r.ignore)
        seen_skips.update(r.skip)
        total_ok += n_ok
        total_fail += n_fail
        total_skip += n_skip
        rows.append((r.unit, n_ok, len(r.err), len(not_run), n_skip))
        for name, detail in r.err:
            failures.append((r.unit, name, locate(locs, name), detail))
        def line_of(where: str) -> int:
            return int(where.rsplit(":", 1)[1]) if where[-1:].isdigit() else 1 << 30

        for where, name in sorted(((locate(locs, n), n) for n in not_run), key=lambda x: (line_of(x[0]), x[1])):
            not_run_all.append((r.unit, name, where))
        for blk in r.block_err:
            block_errs.append((r.unit, blk))
        for e in r.events:
            events.append((r.unit, e))

    print()
    print(f"== Redis {open(os.path.join(args.src, '.kvorum-suite-version')).read().strip() if os.path.exists(os.path.join(args.src, '.kvorum-suite-version')) else ''}"
          f" Tcl suite against {args.server}  ({args.seconds} s)")
    print(f"   {'unit':<18} {'passed':>6} {'failed':>6} {'not run':>7} {'skipped':>7}")
    for unit, ok, err, nr, sk in rows:
        print(f"   {unit:<18} {ok:6d} {err:6d} {nr:7d} {sk:7d}")

    if failures:
        print(f"\n-- failed tests ({len(failures)}):")
        for unit, name, where, detail in failures:
            print(f"   {name}  [{where}]")
            for d in [d for d in detail if d.strip()][:3]:
                print(f"      {d.strip()[:200]}")
    if block_errs:
        print(f"\n-- blocks aborted outside a test ({len(block_errs)}); the rest of the block did not run:")
        for unit, blk in block_errs:
            # runtest drops the first 10 characters of the error message here
            print(f"   {unit}: ...{blk[0].strip()[:300]}")
            for d in [x for x in blk[1:] if x.strip()][:6]:
                print(f"      {d.strip()[:200]}")
    if not_run_all:
        print(f"\n-- not run, counted as failed ({len(not_run_all)}):")
        for unit, name, where in not_run_all:
            print(f"   {name}  [{where}]")
    ev_file = os.path.join(args.log_dir, "events")
    server_events = open(ev_file, encoding="utf-8").read().split("\n") if os.path.exists(ev_file) else []
    if events or any(x.strip() for x in server_events):
        print("\n-- harness events:")
        for unit, e in events:
            print(f"   {unit}: {e}")
        for e in server_events:
            if e.strip():
                print(f"   {e.strip()}")
    if expected is None and not args.write_expected and not args.no_expected:
        print(f"\n!! {args.expected} missing: tests lost to an aborted block are not counted."
              " Create it with: tests/redis_suite/run --against-redis --write-expected")
    elif unexpected_all and not args.write_expected:
        print(f"\n!! {len(unexpected_all)} tests ran that expected-tests.txt does not list "
              "(refresh it with --against-redis --write-expected):")
        for unit, name in unexpected_all[:20]:
            print(f"   {unit}: {name}")
    default_units = {"unit/type/incr", "unit/type/string", "unit/expire", "unit/keyspace",
                     "unit/type/hash", "unit/multi", "unit/protocol"}
    if args.check_unused_skips and set(args.units) >= default_units:
        unused = [e for e in entries if (not seen_skips[e] if not e.startswith("/")
                  else not any(re.search(e[1:], s) for s in seen_skips))]
        if unused:
            print("\n!! skiplist.txt entries that matched no test (remove or fix them):")
            for e in unused:
                print(f"   {e}")

    check_file = os.path.join(args.log_dir, "skiplist-check")
    if os.path.exists(check_file):
        warnings = [x for x in open(check_file, encoding="utf-8").read().split("\n") if x.startswith("!!")]
        if warnings:
            print()
            print("\n".join(warnings))

    if args.write_expected:
        with open(args.expected, "w", encoding="utf-8") as f:
            f.write("# Tests that run (are not skipped) with skiplist.txt, one per line: unit<TAB>name.\n"
                    "# Generated by: tests/redis_suite/run --against-redis --write-expected\n"
                    f"# against {args.server}. A test listed here that does not report [ok] or [err]\n"
                    "# against kvorum (its block aborted, or runtest timed out) counts as failed.\n")
            for r in results:
                for name in sorted(r.ok + [n for n, _ in r.err]):
                    f.write(f"{r.unit}\t{name}\n")
        print(f"\n(wrote {args.expected})")

    denom = total_ok + total_fail
    pct = 100.0 * total_ok / denom if denom else 0.0
    print()
    print(f"passed:  {total_ok}")
    print(f"failed:  {total_fail}  (assertion/command failures {total_fail - len(not_run_all)},"
          f" not run {len(not_run_all)})")
    print(f"skipped: {total_skip}  (skip list: {sum(seen_skips.values())},"
          f" tags {' '.join('-' + t for t in tags)} / external / singledb: {total_skip - sum(seen_skips.values())})")
    print(f"pass rate: {pct:.1f}% of {denom} non-skipped tests (target {args.min_pct:g}%)")
    print(f"{total_ok} passed, {total_fail} failed")
    sys.stdout.flush()
    return 0 if denom and pct >= args.min_pct else 1


def test_body(src: str, where: str, max_lines: int = 40) -> list[str]:
    """Source lines of the test that starts at tests/x.tcl:LINE (up to its closing brace)."""
    try:
        rel, line = where.rsplit(":", 1)
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except (ValueError, FileNotFoundError):
        return []
    start = int(line) - 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = [lines[start]]
    for ln in lines[start + 1:]:
        body.append(ln)
        if ln.strip().startswith("}") and len(ln) - len(ln.lstrip()) == indent:
            break
        if len(body) >= max_lines:
            body.append("    ...")
            break
    return body


def cmd_failures(args) -> int:
    """Markdown draft of every failure of one run (the input of FAILURES.md)."""
    expected = read_expected(args.expected)
    for unit in args.units:
        r = parse_log(unit, os.path.join(args.log_dir, unit.replace("/", "_") + ".log"))
        locs = test_locations(args.src, unit)
        for name, detail in r.err:
            where = locate(locs, name)
            print(f"### {name}\n\n`{where}`\n\n```tcl")
            print("\n".join(test_body(args.src, where)))
            print("```\n\nReported:\n\n```")
            print("\n".join(d.rstrip() for d in detail[:12]))
            print("```\n")
        for blk in r.block_err:
            print(f"### block aborted in {unit}\n\n```")
            print("\n".join(d.rstrip() for d in blk[:16]))
            print("```\n")
        if expected is not None:
            ran = collections.Counter(r.ok) + collections.Counter(n for n, _ in r.err)
            missing = sorted((expected.get(unit, collections.Counter()) - ran).elements())
            if missing:
                print(f"### not run in {unit}\n")
                for n in missing:
                    print(f"- {n} `{locate(locs, n)}`")
                print()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skiplist")
    s.add_argument("skiplist")
    s.add_argument("out")
    s = sub.add_parser("unit-line")
    s.add_argument("unit")
    s.add_argument("log")
    s.add_argument("seconds")
    s = sub.add_parser("summary")
    s.add_argument("--src", required=True)
    s.add_argument("--log-dir", required=True)
    s.add_argument("--skiplist", required=True)
    s.add_argument("--expected", required=True)
    s.add_argument("--server", required=True)
    s.add_argument("--seconds", required=True)
    s.add_argument("--min-pct", type=float, default=95.0)
    s.add_argument("--write-expected", action="store_true")
    s.add_argument("--check-unused-skips", action="store_true")
    s.add_argument("--no-expected", action="store_true")
    s.add_argument("--units", nargs="+", required=True)
    s = sub.add_parser("check-needs")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("skiplist")
    s = sub.add_parser("failures")
    s.add_argument("--src", required=True)
    s.add_argument("--log-dir", required=True)
    s.add_argument("--expected", required=True)
    s.add_argument("--units", nargs="+", required=True)
    a = p.parse_args()
    return {"skiplist": cmd_skiplist, "unit-line": cmd_unit_line, "summary": cmd_summary,
            "failures": cmd_failures, "check-needs": cmd_check_needs}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
