"""State persistence benchmark (cipher suite 1): saving and loading a group with SQLiteStore.

Usage::

    python benchmarks/bench_store.py [--sizes 100,1000,10000,50000] [--encrypted]
                                     [--repeats 7] [--repeats-large 3] [--dir DIR]
                                     [--json PATH]

The XMPP plugin writes a member's group state to its
:class:`~mls_xmpp.storage.sqlite.SQLiteStore` after every change. It used to
write the whole state every time (``encode_group`` + ``save_group``: "old"
below); it now writes it in two parts, the base and the secret trees
("ratchets"), after a Commit (``encode_group_parts`` + ``save_group``) and only
the ratchets after an application message (``encode_ratchets`` +
``save_ratchets``): "new". Since schema version 2 the ratchets and the archive
position are a small row of their own (table ``progress``), so
``save_ratchets`` and ``save_position`` do not touch the row of the base. This
benchmark times both ways for groups of ``n`` members, with the current code
for both (state format 2, schema 2): "old" is the whole state written per
message, as the plugin once did, not the code of that time.

The groups are the steady-state groups of ``bench_group.py``
(``full_tree_groups``: a full tree of ``n`` members built by
``benchmarks/_fulltree.py``, two real members ``A`` at leaf 0 and ``B`` at
leaf n-1, ``GroupConfig(ratchet_tree_in_welcome=False)``). Before measuring,
application messages flow both ways and ``A`` commits ``past_epochs`` (3)
times, so ``B`` holds, like a long-lived member, the current epoch and three
retained past epochs (each with its secret tree; its tree's leaves are
stored as the few that differ from the next newer epoch's, state format 2),
and its secret trees hold sender ratchets. ``B`` is the member whose state is
saved.

Each measurement cycle (``--repeats`` cycles; ``--repeats-large`` for
n > 10,000) is, on the same groups:

1. ``A`` commits an update, ``B`` processes it. Then ``B``'s state is saved
   the old way (``encode_group`` + ``save_group`` of the whole blob) into one
   database and the new way (``encode_group_parts`` + ``save_group``) into
   another: "per Commit".
2. ``A`` sends an application message and ``B`` reads it. It is ``A``'s first
   in the new epoch, so ``B``'s secret tree grows (the ratchets change length).
   ``B``'s state is saved the old way and the new way (``encode_ratchets`` +
   ``save_ratchets``): "first message of a sender in the epoch".
3. Twice: another message from ``A``; saved both ways: "later message" (the
   ratchets keep their length).
4. ``save_position`` alone into the two-part database (what the plugin does
   for the echo of its own message): "position only".

Old and new alternate in which goes first. Each figure is the encoding plus
the SQLite call, timed with ``time.perf_counter``; with ``--encrypted`` every
save also goes to a second pair of databases opened with a 32-byte key
(AES-256-GCM at rest), from the same encoding. Each save's bytes handed to
``write()`` (database, journal and ``secure_delete`` zeroing; ``wchar`` of
``/proc/self/io``, Linux only) are recorded too.

Start-up: after the cycles the databases are closed, then, ``--repeats``
times, each is opened and read (``SQLiteStore(...)`` + ``load_groups``) and the
records are decoded (``decode_group`` for the whole blob, ``decode_group_parts``
for the parts). The file is in the OS page cache (a warm start).

Sizes: the whole blob, the base and the ratchets after the last cycle, the
whole blob and the base of the just-built group (epoch 1, no past epochs),
and each database file.

Every figure is reported as minimum and median over the samples; the
minimum is the least disturbed by other load on a shared machine. The table
(milliseconds, KiB) goes to stdout, progress to stderr; ``--json PATH`` also
writes every sample with the arguments and the environment, and
``benchmarks/plot.py`` draws it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cryptography

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_group import (  # noqa: E402
    CONFIG,
    MESSAGE,
    SUITE_ID,
    Runner,
    full_tree_groups,
    log,
    peak_rss_mib,
    update_round,
)
from mls_xmpp.core.group.epoch import no_psks  # noqa: E402
from mls_xmpp.core.group.events import ApplicationMessage  # noqa: E402
from mls_xmpp.core.group.group import Group  # noqa: E402
from mls_xmpp.core.group.serialize import (  # noqa: E402
    decode_group,
    decode_group_parts,
    encode_group,
    encode_group_parts,
    encode_ratchets,
)
from mls_xmpp.storage.base import GroupRecord  # noqa: E402
from mls_xmpp.storage.sqlite import SQLiteStore  # noqa: E402

ROOM = "bench@conference.example.org"
#: Later messages per cycle (after the first of the epoch).
LATER = 2
#: Sizes from which ``--repeats-large`` applies.
LARGE = 10_001
#: Store formats: the old whole blob, the new two parts.
FORMATS = ("whole", "parts")
#: What each persistence step saves: step -> (format, what the plugin calls).
STEPS = {
    "commit old": ("whole", "encode_group + save_group"),
    "commit new": ("parts", "encode_group_parts + save_group"),
    "first msg old": ("whole", "encode_group + save_group"),
    "first msg new": ("parts", "encode_ratchets + save_ratchets"),
    "later msg old": ("whole", "encode_group + save_group"),
    "later msg new": ("parts", "encode_ratchets + save_ratchets"),
    "position": ("parts", "save_position"),
}


def written_bytes() -> int | None:
    """Bytes this process has passed to ``write()`` so far (Linux), else ``None``."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def summary(samples: list[float]) -> dict[str, Any]:
    """Minimum, median and the samples themselves."""
    return {"min": min(samples), "median": statistics.median(samples), "samples": samples}


def blob_len(blob: bytes | tuple[bytes, bytes]) -> int:
    return len(blob) if isinstance(blob, bytes) else sum(len(b) for b in blob)


class Stores:
    """The databases of one run: one per (format, mode), in ``directory``."""

    def __init__(self, directory: Path, modes: list[str]) -> None:
        self.directory, self.modes = directory, modes
        self.key = os.urandom(32)
        self.open: dict[tuple[str, str], SQLiteStore] = {
            (fmt, mode): self.connect(fmt, mode) for fmt in FORMATS for mode in modes}

    def path(self, fmt: str, mode: str) -> Path:
        return self.directory / f"{fmt}-{mode}.db"

    def connect(self, fmt: str, mode: str) -> SQLiteStore:
        return SQLiteStore(self.path(fmt, mode), key=self.key if mode == "aes-gcm" else None)

    def of(self, fmt: str) -> dict[str, SQLiteStore]:
        return {mode: self.open[fmt, mode] for mode in self.modes}

    def close(self) -> None:
        for store in self.open.values():
            store.close()

    def file_sizes(self) -> dict[str, int]:
        return {f"{fmt} {mode}": self.path(fmt, mode).stat().st_size
                for fmt in FORMATS for mode in self.modes}


class Recorder:
    """Times the persistence steps: encoding once, then the save into each mode's store."""

    def __init__(self, modes: list[str]) -> None:
        self.modes = modes
        self.steps: dict[str, dict[str, Any]] = {}

    def persist(self, step: str, encode: Callable[[], Any],
                save: Callable[[SQLiteStore, Any], None], stores: dict[str, SQLiteStore]) -> None:
        entry = self.steps.setdefault(step, {
            "encode": [], "bytes": [],
            "save": {m: [] for m in self.modes}, "total": {m: [] for m in self.modes},
            "written_bytes": {m: [] for m in self.modes}})
        t0 = time.perf_counter()
        blob = encode()
        t_enc = time.perf_counter() - t0
        entry["encode"].append(t_enc)
        entry["bytes"].append(blob_len(blob))
        for mode, store in stores.items():
            w0 = written_bytes()
            t0 = time.perf_counter()
            save(store, blob)
            dt = time.perf_counter() - t0
            w1 = written_bytes()
            entry["save"][mode].append(dt)
            entry["total"][mode].append(t_enc + dt)
            if w0 is not None and w1 is not None:
                entry["written_bytes"][mode].append(w1 - w0)

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step, e in self.steps.items():
            out[step] = {
                "format": STEPS[step][0], "calls": STEPS[step][1],
                "encode": summary(e["encode"]),
                "save": {m: summary(v) for m, v in e["save"].items()},
                "total": {m: summary(v) for m, v in e["total"].items()},
                "written_bytes": {m: statistics.median(v) if v else None
                                  for m, v in e["written_bytes"].items()},
                "bytes": {"min": min(e["bytes"]), "max": max(e["bytes"])},
            }
        return out


def deliver(sender: Group, receiver: Group, count: int = 1) -> None:
    """``count`` application messages from ``sender``, read by ``receiver``."""
    for _ in range(count):
        event = receiver.process(sender.encrypt(MESSAGE))
        assert isinstance(event, ApplicationMessage) and event.data == MESSAGE


def bench(n: int, args: argparse.Namespace, modes: list[str], repeats: int) -> dict[str, Any]:
    """Every figure for one group size."""
    r: dict[str, Any] = {"n": n, "repeats": repeats}
    log(f"[n={n}] building the steady-state groups")
    t0 = time.perf_counter()
    a, b = full_tree_groups(n, [0, n - 1], check=False)
    r["setup_s"] = time.perf_counter() - t0
    sizes: dict[str, int] = {"whole epoch 1": len(encode_group(b)),
                             "base epoch 1": len(encode_group_parts(b)[0])}

    runner = Runner(set(), None, 0)
    scratch: dict[str, list[float]] = {"create": [], "process": [], "ct": []}

    def commit() -> None:  # A commits an update, B processes it
        update_round(runner, "commit", n, [a, b], 0, 1, scratch, collect=False)

    log(f"[n={n}] warming up: messages and {CONFIG.past_epochs} commits")
    for _ in range(CONFIG.past_epochs):
        deliver(a, b, 3)
        deliver(b, a, 2)
        commit()
    deliver(a, b, 2)
    deliver(b, a, 1)
    r["past_epochs"] = len(b._past)

    gid = b.group_id
    position = str(uuid.uuid4())  # the stanza-id of the last message read

    def save_whole(store: SQLiteStore, blob: bytes) -> None:
        store.save_group(GroupRecord(gid, ROOM, blob, position))

    def save_parts(store: SQLiteStore, parts: tuple[bytes, bytes]) -> None:
        store.save_group(GroupRecord(gid, ROOM, parts[0], position, parts[1]))

    def save_ratchets(store: SQLiteStore, ratchets: bytes) -> None:
        store.save_ratchets(gid, ratchets, position)

    def save_position(store: SQLiteStore, _: bytes) -> None:
        store.save_position(gid, position)

    old = (partial(encode_group, b), save_whole)
    new_commit = (partial(encode_group_parts, b), save_parts)
    new_msg = (partial(encode_ratchets, b), save_ratchets)

    with tempfile.TemporaryDirectory(prefix="bench_store-", dir=args.dir) as tmp:
        stores = Stores(Path(tmp), modes)
        for mode in modes:  # the rows exist before the first measurement
            save_whole(stores.open["whole", mode], encode_group(b))
            save_parts(stores.open["parts", mode], encode_group_parts(b))
        rec = Recorder(modes)

        def both(step: str, new: tuple[Callable[[], Any], Callable[..., None]],
                 first_new: bool) -> None:
            ways = [(f"{step} old", "whole", old), (f"{step} new", "parts", new)]
            for name, fmt, (encode, save) in (ways[::-1] if first_new else ways):
                rec.persist(name, encode, save, stores.of(fmt))

        for i in range(repeats):
            log(f"[n={n}] cycle {i + 1}/{repeats}")
            gc.collect()
            commit()
            position = str(uuid.uuid4())
            both("commit", new_commit, i % 2 == 1)
            deliver(a, b)
            position = str(uuid.uuid4())
            both("first msg", new_msg, i % 2 == 0)
            for k in range(LATER):
                deliver(a, b)
                position = str(uuid.uuid4())
                both("later msg", new_msg, (i + k) % 2 == 1)
            position = str(uuid.uuid4())  # an echo of B's own message: only the position
            rec.persist("position", lambda: b"", save_position, stores.of("parts"))
        r["steps"] = rec.results()
        whole = encode_group(b)
        base, ratchets = encode_group_parts(b)
        sizes.update({"whole": len(whole), "base": len(base), "ratchets": len(ratchets)})
        stores.close()
        sizes.update({f"db {k}": v for k, v in stores.file_sizes().items()})
        r["sizes_bytes"] = sizes
        r["load"] = bench_load(n, stores, repeats, whole, (base, ratchets))
    r["peak_rss_mib"] = peak_rss_mib()
    return r


def bench_load(n: int, stores: Stores, repeats: int, whole: bytes,
               parts: tuple[bytes, bytes]) -> dict[str, Any]:
    """Open + ``load_groups`` per database, then decode each format; checks the round trip."""
    read: dict[str, dict[str, list[float]]] = {fmt: {m: [] for m in stores.modes}
                                               for fmt in FORMATS}
    decode: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    stored = {"whole": (whole, None), "parts": parts}
    for i in range(repeats):
        log(f"[n={n}] start-up load {i + 1}/{repeats}")
        records = {}
        for fmt in FORMATS:
            for mode in stores.modes:
                gc.collect()
                t0 = time.perf_counter()
                store = stores.connect(fmt, mode)
                (record,) = store.load_groups()
                read[fmt][mode].append(time.perf_counter() - t0)
                store.close()
                assert (record.state, record.ratchets) == stored[fmt], f"{fmt} {mode} differs"
                records[fmt] = record
        for fmt in FORMATS:
            rec = records[fmt]
            gc.collect()
            t0 = time.perf_counter()
            if fmt == "whole":
                group = decode_group(rec.state, CONFIG, no_psks)
            else:
                assert rec.ratchets is not None
                group = decode_group_parts(rec.state, rec.ratchets, CONFIG, no_psks)
            decode[fmt].append(time.perf_counter() - t0)
            if i == 0:
                assert encode_group(group) == whole, f"{fmt}: the loaded group differs"
            del group
    out: dict[str, Any] = {}
    for fmt in FORMATS:
        out[fmt] = {
            "calls": "load_groups + " + ("decode_group" if fmt == "whole"
                                         else "decode_group_parts"),
            "read": {m: summary(v) for m, v in read[fmt].items()},
            "decode": summary(decode[fmt]),
            "total": {m: summary([x + y for x, y in zip(v, decode[fmt], strict=True)])
                      for m, v in read[fmt].items()},
        }
    return out


# -- output ------------------------------------------------------------------------------


def ms(s: dict[str, Any]) -> str:
    """``min/median`` in milliseconds."""
    def one(x: float) -> str:
        v = x * 1e3
        digits = 3 if v < 1 else 2 if v < 10 else 1 if v < 100 else 0
        return f"{v:.{digits}f}"

    return f"{one(s['min'])}/{one(s['median'])}"


def kib(v: float | None) -> str:
    if v is None:
        return "-"
    k = v / 1024
    return f"{k:.1f}" if k < 100 else f"{k:.0f}"


def table_rows(mode: str) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """(label, cell) rows of one mode's table."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    for step, label in (("later msg", "message"), ("first msg", "1st msg of sender"),
                        ("commit", "Commit")):
        for way in ("old", "new"):
            key = f"{step} {way}"
            rows += [
                (f"{label}, {way}: total", lambda r, k=key: ms(r["steps"][k]["total"][mode])),
                ("  encode", lambda r, k=key: ms(r["steps"][k]["encode"])),
                ("  save", lambda r, k=key: ms(r["steps"][k]["save"][mode])),
                ("  written KiB", lambda r, k=key: kib(r["steps"][k]["written_bytes"][mode])),
            ]
    rows += [
        ("position only: total", lambda r: ms(r["steps"]["position"]["total"][mode])),
        ("  written KiB", lambda r: kib(r["steps"]["position"]["written_bytes"][mode])),
    ]
    for fmt, way in (("whole", "old"), ("parts", "new")):
        rows.append((f"start-up load, {way}", lambda r, f=fmt: ms(r["load"][f]["total"][mode])))
        rows.append(("  open + load_groups", lambda r, f=fmt: ms(r["load"][f]["read"][mode])))
        rows.append(("  decode", lambda r, f=fmt: ms(r["load"][f]["decode"])))
    for key in ("whole", "base", "ratchets", "whole epoch 1", "base epoch 1"):
        rows.append((f"{key} KiB", lambda r, k=key: kib(r["sizes_bytes"][k])))
    for fmt, way in (("whole", "old"), ("parts", "new")):
        rows.append((f"database file KiB, {way}",
                     lambda r, f=fmt: kib(r["sizes_bytes"][f"db {f} {mode}"])))
    return rows


def print_table(results: dict[int, dict[str, Any]], modes: list[str]) -> None:
    sizes = list(results)
    for mode in modes:
        print(f"\n{'suite 1, ' + mode + ' (ms: min/median)':<34}"
              + "".join(f"{f'n={n}':>16}" for n in sizes))
        for label, cell in table_rows(mode):
            print(f"{label:<34}" + "".join(f"{cell(results[n]):>16}" for n in sizes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000,10000,50000",
                   help="comma-separated member counts (default 100,1000,10000,50000)")
    p.add_argument("--encrypted", action="store_true",
                   help="also save into databases encrypted at rest (a 32-byte key)")
    p.add_argument("--repeats", type=int, default=7,
                   help="measurement cycles (and start-up loads) per size (default 7)")
    p.add_argument("--repeats-large", type=int, default=3,
                   help=f"the same for n >= {LARGE:,} (default 3)")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the temporary databases go (default: the system's temporary "
                        "directory; its file system decides what an fsync costs)")
    p.add_argument("--json", type=Path, help="write every figure and sample as JSON to this file")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(n < 2 for n in sizes):
        p.error("sizes must be >= 2")
    if args.repeats < 1 or args.repeats_large < 1:
        p.error("repeats must be >= 1")
    modes = ["plain", "aes-gcm"] if args.encrypted else ["plain"]
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        t0 = time.perf_counter()
        results[n] = bench(n, args, modes, args.repeats if n < LARGE else args.repeats_large)
        results[n]["wall_s"] = time.perf_counter() - t0
        log(f"[n={n}] done in {results[n]['wall_s']:.1f} s")
        gc.collect()
    print_table(results, modes)
    if args.json:
        doc = {
            "benchmark": "bench_store",
            "cipher_suite": SUITE_ID,
            "units": "seconds; keys ending in _bytes: bytes; min/median over the samples",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": {
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "cryptography": cryptography.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "tmp_dir": str(args.dir or tempfile.gettempdir()),
                "loadavg_at_start": load_before,
                "loadavg_at_end": os.getloadavg(),
            },
            "modes": modes,
            "total_seconds": time.perf_counter() - t_all,
            "results": {str(n): v for n, v in results.items()},
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
