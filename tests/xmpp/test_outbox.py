"""The outbox on its own: order, states, exactly-once bookkeeping, durable and sealed."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from mls_xmpp.errors import NotConnectedError, TransportError
from mls_xmpp.storage import MemoryStore, OutboxRecord, SQLiteStore, StateStore, StorageError
from mls_xmpp.xmpp.outbox import Outbox

GID = b"g" * 16


def _stores(tmp_path: Path) -> list[StateStore]:
    return [MemoryStore(), SQLiteStore(tmp_path / "s.db", key=b"k" * 32)]


class Wire:
    """What a flush sends, and when it may."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[bytes] = []
        self.counter = 0
        self.fail_prepare: set[bytes] = set()

    async def encrypt(self, content: bytes) -> bytes:
        self.counter += 1  # a new ciphertext each time, as MLS gives
        return content + b"#" + str(self.counter).encode()

    async def prepare(self, message: bytes) -> bytes:
        if any(message.startswith(c) for c in self.fail_prepare):
            raise TransportError("upload failed")
        return message

    def transmit(self, message: bytes) -> None:
        self.sent.append(message)

    async def flush(self, outbox: Outbox) -> None:
        await outbox.flush(can_send=lambda: self.up, encrypt=self.encrypt,
                           prepare=self.prepare, transmit=self.transmit)


def _outbox(store: StateStore, log: list[tuple[str, str]]) -> Outbox:
    return Outbox(store, GID, lambda m, s, sid, e: log.append((m, s)))


@pytest.mark.parametrize("kind", [0, 1])
def test_queued_sent_reflected_in_order(tmp_path: Path, kind: int) -> None:
    store = _stores(tmp_path)[kind]
    log: list[tuple[str, str]] = []
    box, wire = _outbox(store, log), Wire()
    for i in range(3):
        box.add(f"m{i}", f"body {i}".encode())
    assert [i.state for i in box.items] == ["queued"] * 3
    asyncio.run(wire.flush(box))
    assert [m.split(b"#")[0] for m in wire.sent] == [b"body 0", b"body 1", b"body 2"]
    assert [i.state for i in box.items] == ["sent"] * 3
    assert box.reflected(hashlib.sha256(wire.sent[1]).digest(), "s1")
    assert not box.reflected(b"\x00" * 32, None)  # someone else's
    assert box.state("m1") == "reflected" and [i.message_id for i in box.items] == ["m0", "m2"]
    assert [r.message_id for r in store.load_outbox(GID)] == ["m0", "m2"]
    assert log[:3] == [("m0", "queued"), ("m1", "queued"), ("m2", "queued")]
    assert ("m1", "reflected") in log


def test_a_lost_stream_keeps_the_rest_and_requeue_resends_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", key=b"k" * 32)
    box, wire = _outbox(store, []), Wire()
    box.add("a", b"zebra one")
    box.add("b", b"zebra two")
    asyncio.run(wire.flush(box))
    # a new process: the store is all it has; "a" reached the room, "b" did not
    again = _outbox(store, [])
    assert [(i.message_id, i.state) for i in again.items] == [("a", "sent"), ("b", "sent")]
    assert again.reflected(hashlib.sha256(wire.sent[0]).digest(), "x")
    assert again.requeue() == 1
    wire.sent.clear()
    wire.up = False
    asyncio.run(wire.flush(again))
    assert wire.sent == [] and again.state("b") == "queued"
    wire.up = True
    asyncio.run(wire.flush(again))
    assert [m.split(b"#")[0] for m in wire.sent] == [b"zebra two"]  # anew, once
    asyncio.run(wire.flush(again))
    assert len(wire.sent) == 1
    # sealed at rest
    raw = (tmp_path / "s.db").read_bytes()
    assert b"zebra" not in raw


def test_failures(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    box, wire = _outbox(MemoryStore(), log), Wire()
    box.add("big", b"too big")
    box.add("ok", b"fine")
    wire.fail_prepare = {b"too big"}
    asyncio.run(wire.flush(box))  # an upload failure online: that one fails, the next goes
    assert box.state("big") == "failed" and isinstance(box.error("big"), TransportError)
    assert box.state("ok") == "sent"

    async def offline(content: bytes) -> bytes:
        raise NotConnectedError("gone")

    box.add("later", b"later")
    asyncio.run(box.flush(can_send=lambda: True, encrypt=offline, prepare=wire.prepare,
                          transmit=wire.transmit))
    assert box.state("later") == "queued"  # a lost stream fails nothing
    box.fail_all(NotConnectedError("removed"))
    assert len(box) == 0 and box.state("later") == "failed"
    assert box.state("never") is None


def test_sqlite_outbox_rows_are_bound_to_their_place(tmp_path: Path) -> None:
    import sqlite3

    from mls_xmpp.storage import StorageError

    store = SQLiteStore(tmp_path / "s.db", key=b"k" * 32)
    store.save_outbox(OutboxRecord(GID, 0, "a", b"one"))
    store.save_outbox(OutboxRecord(GID, 1, "b", b"two", b"d" * 32))
    assert [(r.seq, r.content, r.sent_digest) for r in store.load_outbox(GID)] == [
        (0, b"one", None), (1, b"two", b"d" * 32)]
    store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE outbox SET seq = 5 WHERE seq = 0")  # moved: does not decrypt
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "s.db", key=b"k" * 32)
    with pytest.raises(StorageError):
        store.load_outbox(GID)
    store.delete_group(GID)
    assert store.load_outbox(GID) == []




def test_requeue_keeps_what_the_current_stream_took(tmp_path: Path) -> None:
    """An archive read on the same stream (a heal) must not send a message twice: only
    entries handed to an earlier stream (or loaded from the store) are queued again."""
    store = MemoryStore()
    box, wire = _outbox(store, []), Wire()
    box.add("m0", b"zero")
    asyncio.run(box.flush(can_send=lambda: True, encrypt=wire.encrypt, prepare=wire.prepare,
                          transmit=wire.transmit, stream=1))
    box.add("m1", b"one")
    asyncio.run(box.flush(can_send=lambda: True, encrypt=wire.encrypt, prepare=wire.prepare,
                          transmit=wire.transmit, stream=2))
    assert box.requeue(2) == 1  # m0 went to stream 1, gone; m1 may still be on its way
    assert [(i.message_id, i.state) for i in box.items] == [("m0", "queued"), ("m1", "sent")]
    restarted = _outbox(store, [])
    assert restarted.requeue(2) == 1  # another process: nothing of it is on this stream
    assert [i.state for i in restarted.items] == ["queued", "queued"]


def test_sent_mark_written_with_the_encryption(tmp_path: Path) -> None:
    """An encryption that stores the ``sent`` entry with its own write (as a session
    does, in the ratchets' transaction) is not written again by the flush; one whose
    stanza then does not go out stays queued in memory and is sent anew later."""
    store = SQLiteStore(tmp_path / "s.db")
    box, wire = _outbox(store, []), Wire()
    box.add("a", b"one")
    box.add("b", b"two")
    written: list[tuple[str, bytes | None]] = []
    saves: list[str] = []
    save_outbox = store.save_outbox

    def counting(record: OutboxRecord) -> None:
        saves.append(record.message_id)
        save_outbox(record)

    store.save_outbox = counting  # type: ignore[method-assign]

    async def encrypt(content: bytes) -> bytes:
        message = await wire.encrypt(content)
        sent = box.sending(message)
        assert sent is not None and sent.content == content
        with store.transaction():
            store.save_outbox(sent)
        box.stored_sent(sent)
        # in the store before the stanza goes out
        written.append((sent.message_id, store.load_outbox(GID)[0].sent_digest))
        return message

    wire.fail_prepare = {b"one"}
    asyncio.run(box.flush(can_send=lambda: wire.up, encrypt=encrypt, prepare=wire.prepare,
                          transmit=wire.transmit))
    assert box.state("a") == "failed" and box.state("b") == "sent"
    assert saves == ["a", "b"]  # once each, in the encryption's write
    assert written[0] == ("a", hashlib.sha256(b"one#1").digest())
    assert [(r.message_id, r.sent_digest) for r in store.load_outbox(GID)] == [
        ("b", hashlib.sha256(wire.sent[0]).digest())]
    assert box.sending(b"x") is None  # nothing is being encrypted now

    # the stream falls after the encryption stored the mark: queued in memory, stored
    # "sent" (a restart requeues it after reading the archive), sent anew in this process
    box.add("c", b"three")
    wire.up = False
    lost = {"n": 0}

    async def prepare_lost(message: bytes) -> bytes:
        lost["n"] += 1
        raise NotConnectedError("gone")

    asyncio.run(box.flush(can_send=lambda: True, encrypt=encrypt, prepare=prepare_lost,
                          transmit=wire.transmit))
    assert lost["n"] == 1 and box.state("c") == "queued"
    assert _outbox(store, []).state("c") == "sent"
    wire.up = True
    asyncio.run(box.flush(can_send=lambda: True, encrypt=encrypt, prepare=wire.prepare,
                          transmit=wire.transmit))
    assert box.state("c") == "sent" and wire.sent[-1].startswith(b"three#")
    assert store.load_outbox(GID)[-1].sent_digest == hashlib.sha256(wire.sent[-1]).digest()


def test_deferred_store_written_once_with_the_encryption_or_queued(tmp_path: Path) -> None:
    """``add(defer_store=True)``: the entry reaches the store in the encryption's
    write (one write, already sent), or ``store_pending`` writes it queued."""
    from mls_xmpp.storage import StorageError

    store = SQLiteStore(tmp_path / "s.db")
    log: list[tuple[str, str]] = []
    box, wire = _outbox(store, log), Wire()
    saves: list[tuple[str, bool]] = []
    save_outbox = store.save_outbox
    broken = {"on": False}

    def counting(record: OutboxRecord) -> None:
        if broken["on"]:
            raise StorageError("disk full")
        saves.append((record.message_id, record.sent_digest is not None))
        save_outbox(record)

    store.save_outbox = counting  # type: ignore[method-assign]

    async def encrypt(content: bytes) -> bytes:
        message = await wire.encrypt(content)
        sent = box.sending(message)
        assert sent is not None
        store.save_outbox(sent)
        box.stored_sent(sent)
        return message

    box.add("a", b"one", defer_store=True)
    assert store.load_outbox(GID) == [] and box.state("a") == "queued"
    asyncio.run(box.flush(can_send=lambda: True, encrypt=encrypt, prepare=wire.prepare,
                          transmit=wire.transmit))
    box.store_pending("a")
    assert saves == [("a", True)]  # one write, the entry already sent
    assert [(r.message_id, r.sent_digest) for r in store.load_outbox(GID)] == [
        ("a", hashlib.sha256(wire.sent[0]).digest())]

    # the flush could not send it: store_pending writes it queued
    box.add("b", b"two", defer_store=True)
    asyncio.run(box.flush(can_send=lambda: False, encrypt=encrypt, prepare=wire.prepare,
                          transmit=wire.transmit))
    box.store_pending("b")
    box.store_pending("b")  # once
    assert saves[1:] == [("b", False)]
    assert _outbox(store, []).state("b") == "queued"

    # the store refuses it: given up, reported failed, the error raised
    broken["on"] = True
    box.add("c", b"three", defer_store=True)
    with pytest.raises(StorageError):
        box.store_pending("c")
    assert box.state("c") == "failed" and ("c", "failed") in log
    assert [r.message_id for r in store.load_outbox(GID)] == ["a", "b"]


@pytest.mark.parametrize("kind", [0, 1])
def test_a_message_reflected_too_late_is_queued_again(tmp_path: Path, kind: int) -> None:
    from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage
    from mls_xmpp.xmpp.late import RESEND_AFTER

    class Epochs(Wire):
        epoch = 5

        async def encrypt(self, content: bytes) -> bytes:
            self.counter += 1
            return MLSMessage(PrivateMessage(GID, self.epoch, 1, b"",
                                             b"s", content + bytes([self.counter]))).encode()

    store = _stores(tmp_path)[kind]
    log: list[tuple[str, str]] = []
    box, wire = _outbox(store, log), Epochs()
    box.add("in-time", b"a")
    box.add("late", b"b")
    asyncio.run(wire.flush(box))
    first, second = (hashlib.sha256(m).digest() for m in wire.sent)
    # the room took the first within RESEND_AFTER epochs: it ends as usual
    assert not box.too_late(first, 5 + RESEND_AFTER)
    assert box.reflected(first, "s1")
    # the second came back one epoch later than that: queued again, stored so
    assert box.too_late(second, 6 + RESEND_AFTER)
    assert box.state("late") == "queued"
    assert [r.sent_digest for r in store.load_outbox(GID)] == [None]
    wire.epoch = 6 + RESEND_AFTER
    asyncio.run(wire.flush(box))
    third = hashlib.sha256(wire.sent[-1]).digest()
    assert len(wire.sent) == 3 and not box.too_late(third, 6 + RESEND_AFTER)
    assert box.reflected(third, "s2") and box.items == []
    assert log == [("in-time", "queued"), ("late", "queued"), ("in-time", "sent"),
                   ("late", "sent"), ("in-time", "reflected"), ("late", "queued"),
                   ("late", "sent"), ("late", "reflected")]
    assert not box.too_late(b"unknown" * 4, 100)


@pytest.mark.parametrize("kind", [0, 1])
def test_the_epoch_sent_in_survives_a_restart(tmp_path: Path, kind: int) -> None:
    """The epoch an entry was encrypted in is stored with it: an Outbox made anew from
    the store (a restart) still tells a reflection taken too late (issue 17)."""
    from mls_xmpp.core.messages.framing import MLSMessage, PrivateMessage
    from mls_xmpp.xmpp.late import RESEND_AFTER

    class Epochs(Wire):
        async def encrypt(self, content: bytes) -> bytes:
            self.counter += 1
            return MLSMessage(PrivateMessage(GID, 7, 1, b"", b"s",
                                             content + bytes([self.counter]))).encode()

    store = _stores(tmp_path)[kind]
    box, wire = _outbox(store, []), Epochs()
    box.add("in-time", b"a")
    box.add("late", b"b")
    asyncio.run(wire.flush(box))
    assert [r.sent_epoch for r in store.load_outbox(GID)] == [7, 7]
    first, second = (hashlib.sha256(m).digest() for m in wire.sent)
    again = _outbox(store, [])  # a new process: the store is all it has
    assert not again.too_late(first, 7 + RESEND_AFTER)
    assert again.reflected(first, "s1")
    assert again.too_late(second, 8 + RESEND_AFTER)
    assert again.state("late") == "queued"
    assert [(r.sent_digest, r.sent_epoch) for r in store.load_outbox(GID)] == [(None, None)]


@pytest.mark.parametrize("kind", [0, 1])
def test_an_end_not_written_comes_back_after_a_rollback(tmp_path: Path, kind: int) -> None:
    """An echo's deletion waiting for the group's next write (``later``) is lost when
    the group is rolled back: the stored entry comes back, to be ended by its
    reflection read again, instead of being found (and sent again) after a restart."""
    store = _stores(tmp_path)[kind]
    log: list[tuple[str, str]] = []
    box, wire = _outbox(store, log), Wire()
    box.add("m0", b"body 0")
    box.add("m1", b"body 1")
    asyncio.run(wire.flush(box))
    later: list[int] = []
    first = hashlib.sha256(wire.sent[0]).digest()
    assert box.reflected(first, "s0", later=later) and later == [0]
    assert [e.message_id for e in store.load_outbox(GID)] == ["m0", "m1"]  # not yet
    assert [i.message_id for i in box.items] == ["m1"]
    assert box.restore_stored() == 1  # the rollback: later is dropped, m0 comes back
    assert [(i.message_id, i.state) for i in box.items] == [("m0", "sent"), ("m1", "sent")]
    assert box.reflected(first, "s0")  # read again from the archive: ended for good
    assert [e.message_id for e in store.load_outbox(GID)] == ["m1"]
    assert box.restore_stored() == 0


def test_a_write_failed_after_transmission_is_told_apart(tmp_path: Path) -> None:
    """``store_later`` writes of a burst run after the stanzas left: one that fails
    is raised as SentNotStoredError (a StorageError) naming the messages that were
    transmitted without their entry written; the others' writes stand."""
    from mls_xmpp.errors import SentNotStoredError

    store = SQLiteStore(tmp_path / "s.db", key=b"k" * 32)
    box, wire = _outbox(store, []), Wire()

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def store_later(record: OutboxRecord) -> asyncio.Future[None]:
            done: asyncio.Future[None] = loop.create_future()
            if record.message_id == "b":
                done.set_exception(StorageError("database or disk is full"))
            else:
                store.save_outbox(record)
                done.set_result(None)
            return done

        for m in ("a", "b", "c"):
            box.add(m, m.encode(), defer_store=True)
        with pytest.raises(SentNotStoredError) as info:
            await box.flush(can_send=lambda: True, encrypt=wire.encrypt,
                            prepare=wire.prepare, transmit=wire.transmit,
                            store_later=store_later)
        assert info.value.message_ids == ("b",) and info.value.transmitted
        assert isinstance(info.value.__cause__, StorageError)

    asyncio.run(run())
    assert len(wire.sent) == 3  # all three left
    assert [r.message_id for r in store.load_outbox(GID)] == ["a", "c"]
    assert [i.state for i in box.items] == ["sent"] * 3


def test_lazy_entries_written_after_the_flush_and_waited_for_by_written(
        tmp_path: Path) -> None:
    """``add(lazy=True)`` (``send(durable=False)``): the flush submits the ``sent``
    write after the stanza left and returns without waiting for it; ``written()``
    waits for it (and raises its error); a durable entry's write is waited for."""
    from mls_xmpp.storage import StorageError

    store = SQLiteStore(tmp_path / "s.db")
    box, wire = _outbox(store, []), Wire()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gates: list[tuple[OutboxRecord, asyncio.Future[None]]] = []

        def store_later(record: OutboxRecord) -> asyncio.Future[None]:
            gate: asyncio.Future[None] = loop.create_future()
            gates.append((record, gate))
            return gate

        def commit(i: int, error: BaseException | None = None) -> None:
            record, gate = gates[i]
            if error is None:
                store.save_outbox(record)
                gate.set_result(None)
            else:
                gate.set_exception(error)

        async def flush() -> None:
            await box.flush(can_send=lambda: True, encrypt=wire.encrypt,
                            prepare=wire.prepare, transmit=wire.transmit,
                            store_later=store_later)

        box.add("a", b"one", defer_store=True, lazy=True)
        await asyncio.wait_for(flush(), 5)  # returns with its write still open
        box.store_pending("a")  # the write is on its way: nothing written here
        assert len(wire.sent) == 1 and len(gates) == 1 and store.load_outbox(GID) == []
        assert box.state("a") == "sent"
        waiting = asyncio.ensure_future(box.written())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # written() waits for the submitted write
        commit(0)
        await asyncio.wait_for(waiting, 5)
        assert [r.message_id for r in store.load_outbox(GID)] == ["a"]
        await box.written()  # nothing left: returns at once

        # a durable entry: the flush waits for its write
        box.add("b", b"two", defer_store=True)
        flushing = asyncio.ensure_future(flush())
        await asyncio.sleep(0.01)
        assert not flushing.done() and len(gates) == 2
        commit(1)
        await asyncio.wait_for(flushing, 5)

        # a failed lazy write: written() raises it
        box.add("c", b"three", defer_store=True, lazy=True)
        await asyncio.wait_for(flush(), 5)
        commit(2, StorageError("disk full"))
        with pytest.raises(StorageError, match="disk full") as info:
            await box.written()
        from mls_xmpp.errors import SentNotStoredError  # transmitted all the same

        assert isinstance(info.value, SentNotStoredError) and info.value.message_ids == ("c",)
        await box.written()  # reported once; the group is suspended by the write's owner

    asyncio.run(scenario())
