"""The plugin's serial store writer (mls_xmpp.xmpp.writer) over a real SQLiteStore:
writes submitted to its thread land in order, no call through its ordered store
overtakes one, a batch is one commit, a failed write stops its group's later
writes until it is cleared, and a store without threads writes at once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from mls_xmpp.storage import GroupRecord, MemoryStore, OutboxRecord, SQLiteStore, StorageError
from mls_xmpp.xmpp.writer import StoreWriter

GID = b"g" * 16
OTHER = b"h" * 16


def _record(gid: bytes, position: str) -> GroupRecord:
    return GroupRecord(gid, f"room-{gid[:1].decode()}@muc.example", b"base", position,
                       b"ratchets-" + position.encode())


class SlowStore:
    """An SQLiteStore whose ``save_ratchets`` waits until released (a slow disk),
    and can be made to fail (a full disk)."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStore(path)
        self.release = threading.Event()
        self.fail = False
        self.threads: list[str] = []

    def save_ratchets(self, group_id: bytes, ratchets: bytes, last: str | None) -> None:
        self.threads.append(threading.current_thread().name)
        self.release.wait(10)
        if self.fail:
            raise StorageError("database or disk is full")
        self.inner.save_ratchets(group_id, ratchets, last)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _position(store: SQLiteStore, gid: bytes) -> str | None:
    return {r.group_id: r.last_stanza_id for r in store.load_groups()}[gid]


def test_a_write_on_the_loop_waits_for_the_older_one_in_the_thread(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "s.db")
    store.inner.save_group(_record(GID, "p0"))
    writer = StoreWriter(store)  # type: ignore[arg-type]
    assert writer.threaded

    async def main() -> None:
        older = writer.submit(GID, lambda s: s.save_ratchets(GID, b"r1", "p1"))
        await asyncio.sleep(0.05)  # the thread is in the slow write
        assert not writer.idle
        threading.Timer(0.2, store.release.set).start()
        # a newer position written on the loop: it waits for the older write,
        # which therefore cannot land after it and move the position back
        writer.store.save_position(GID, "p2")
        assert older.done() or writer.idle
        await older
        assert _position(store.inner, GID) == "p2"
        assert store.threads == ["mls-store-writer"]  # the write ran off the loop

    asyncio.run(main())
    writer.close()
    store.inner.close()


def test_an_outbox_save_never_lands_after_its_deletion(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.save_group(_record(GID, "p0"))
    writer = StoreWriter(store)
    entry = OutboxRecord(GID, 0, "m0", b"content", b"d" * 32)

    async def main() -> None:
        saved = writer.submit(GID, lambda s: s.save_outbox(entry))
        writer.store.delete_outbox(GID, 0)  # e.g. the echo, read at once
        await saved
        assert store.load_outbox(GID) == []

    asyncio.run(main())
    writer.close()
    store.close()


def test_what_queued_up_is_one_commit_in_submission_order(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "s.db")
    store.inner.save_group(_record(GID, "p0"))
    writer = StoreWriter(store)  # type: ignore[arg-type]

    async def main() -> None:
        first = writer.submit(GID, lambda s: s.save_ratchets(GID, b"r1", "p1"))
        await asyncio.sleep(0.05)  # in the thread, waiting for the disk
        later = [writer.submit(GID, lambda s, i=i: s.save_position(GID, f"q{i}"))
                 for i in range(5)]
        commits = writer.commits
        store.release.set()
        await asyncio.gather(first, *later)
        assert writer.commits == commits + 2  # the first write, then the five at once
        assert _position(store.inner, GID) == "q4"  # the last one submitted

    asyncio.run(main())
    writer.close()
    store.inner.close()


def test_a_failed_write_stops_its_groups_later_writes_until_cleared(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "s.db")
    store.inner.save_group(_record(GID, "p0"))
    store.inner.save_group(_record(OTHER, "o0"))
    writer = StoreWriter(store)  # type: ignore[arg-type]
    store.fail = True

    async def main() -> None:
        failing = writer.submit(GID, lambda s: s.save_ratchets(GID, b"r1", "p1"))
        after = writer.submit(GID, lambda s: s.save_position(GID, "p2"))
        other = writer.submit(OTHER, lambda s: s.save_position(OTHER, "o1"))
        store.release.set()
        with pytest.raises(StorageError):
            await failing
        with pytest.raises(StorageError):  # not written: it would land on a rolled back group
            await after
        await other  # other groups go on
        assert _position(store.inner, GID) == "p0"
        assert _position(store.inner, OTHER) == "o1"
        assert writer.failed(GID) is not None
        with pytest.raises(StorageError):  # nor on the loop
            writer.store.save_position(GID, "p3")
        writer.clear(GID)  # the plugin rolled the group back and writes it whole
        store.fail = False
        writer.store.save_group(_record(GID, "p4"))
        await writer.submit(GID, lambda s: s.save_position(GID, "p5"))
        assert _position(store.inner, GID) == "p5"

    asyncio.run(main())
    writer.close()
    store.inner.close()


def test_a_job_is_all_or_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.save_group(_record(GID, "p0"))
    store.save_outbox(OutboxRecord(GID, 0, "m0", b"content", b"d" * 32))
    writer = StoreWriter(store)

    def job(s: object) -> None:
        store.save_position(GID, "p1")  # done, then the deletion fails
        raise StorageError("the disk failed half way")

    async def main() -> None:
        with pytest.raises(StorageError):
            await writer.submit(GID, job)
        assert _position(store, GID) == "p0"  # the position did not move alone

    asyncio.run(main())
    writer.close()
    store.close()


def test_no_thread_for_a_store_that_is_not_thread_safe() -> None:
    store = MemoryStore()
    store.save_group(_record(GID, "p0"))
    writer = StoreWriter(store)
    assert not writer.threaded

    async def main() -> None:
        done = writer.submit(GID, lambda s: s.save_position(GID, "p1"))
        assert done.done()  # written at once, on the loop
        await done
        assert store.load_groups()[0].last_stanza_id == "p1"

    asyncio.run(main())


def test_nothing_is_submitted_inside_a_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    writer = StoreWriter(store)

    async def main() -> None:
        with writer.store.transaction(), pytest.raises(RuntimeError):
            writer.submit(GID, lambda s: None)

    asyncio.run(main())
    writer.close()
    store.close()


def test_a_write_submitted_without_waking_waits_for_wake_or_a_drain(tmp_path: Path) -> None:
    """``submit(wake=False)``: an idle thread is not woken (nothing commits) until
    :meth:`StoreWriter.wake`; a drain from the event loop wakes it too (no deadlock)."""
    from mls_xmpp.storage import GroupRecord, SQLiteStore

    store = SQLiteStore(tmp_path / "w.db")
    store.save_group(GroupRecord(b"g1", "r@x", b"base", "s0", b"rat0"))
    writer = StoreWriter(store)

    async def scenario() -> None:
        first = writer.submit(b"g1", lambda s: s.save_position(b"g1", "s1"))
        await first  # the thread exists and is idle now
        held = writer.submit(b"g1", lambda s: s.save_position(b"g1", "s2"), wake=False)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not held.done() and not writer.idle
        writer.wake()
        await asyncio.wait_for(held, 10)
        again = writer.submit(b"g1", lambda s: s.save_position(b"g1", "s3"), wake=False)
        writer.drain()  # wakes it and waits
        await asyncio.wait_for(again, 10)

    try:
        asyncio.run(scenario())
        assert store.load_groups()[0].last_stanza_id == "s3"
    finally:
        writer.close()
        store.close()
