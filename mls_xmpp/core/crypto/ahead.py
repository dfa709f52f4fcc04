"""Batches of signature checks started ahead of the serial work they overlap.

A join or a bulk add does two kinds of work: public-key operations that a
:class:`~mls_xmpp.core.crypto.batch.BatchCrypto` may share with other cores,
and serial work that only the calling thread does (decoding a ratchet tree,
its tree hash and the other checks of ``validate_tree``, the KeyPackage
checks). Done one after the other, the serial work keeps the other cores
idle. A :class:`PendingVerify` lets the core hand over signature items as it
produces them (while decoding), carry on with its serial work, and only then
collect the answers::

    with start_verify(config.batch_crypto, suite.id) as pending:
        for item in ...:            # e.g. one per leaf while decoding
            pending.add(item)
        ... serial checks ...       # calling pending.poll() now and then
        ok = pending.result()       # one bool per item, in order

Nothing about validity changes: the answers are only looked at where the
serial code looked at them before, so the same checks run in the same order
and raise the same errors; a failed item is verified again serially by the
caller, as with :meth:`BatchCrypto.verify`.

A batch crypto that can work ahead has a ``start_verify(suite_id)`` method
returning a :class:`PendingVerify` (:class:`mls_xmpp.workers.WorkerPool`
does). For any other -- the core's :data:`~.batch.SERIAL` included -- the
items are collected and given to its ``verify`` in :meth:`PendingVerify.result`,
i.e. exactly when and how they were computed before.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from .batch import BatchCrypto, VerifyBatch, VerifyItem, check_results

__all__ = ["PendingVerify", "start_verify"]


class PendingVerify(Protocol):
    """Signature checks handed over one by one, answered all at once."""

    def add(self, item: VerifyItem) -> None:
        """Append one ``(public key, SignContent, signature)`` item."""
        ...

    def poll(self) -> None:
        """Let the implementation move work along (cheap; never blocks for long)."""
        ...

    def result(self) -> list[bool]:
        """Whether each item verifies, in the order added. Call at most once."""
        ...

    def close(self) -> None:
        """Give up the checks not answered yet (after an error); idempotent."""
        ...

    def __enter__(self) -> PendingVerify:
        ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        ...


class _Deferred:
    """Items collected here and verified by ``crypto.verify`` in :meth:`result`."""

    def __init__(self, crypto: BatchCrypto, suite_id: int) -> None:
        self._crypto = crypto
        self._suite_id = suite_id
        self._items: list[VerifyItem] = []

    def add(self, item: VerifyItem) -> None:
        self._items.append(item)

    def poll(self) -> None:
        pass

    def result(self) -> list[bool]:
        batch = VerifyBatch(self._suite_id, tuple(self._items))
        out = self._crypto.verify(batch)
        check_results(out, len(batch))
        return out

    def close(self) -> None:
        self._items = []

    def __enter__(self) -> _Deferred:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Counted:
    """An injected :class:`PendingVerify`, its answer checked for one result per item."""

    def __init__(self, inner: PendingVerify) -> None:
        self._inner = inner
        self._count = 0

    def add(self, item: VerifyItem) -> None:
        self._inner.add(item)
        self._count += 1

    def poll(self) -> None:
        self._inner.poll()

    def result(self) -> list[bool]:
        out = self._inner.result()
        check_results(out, self._count)
        return out

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_verify(crypto: BatchCrypto, suite_id: int) -> PendingVerify:
    """A :class:`PendingVerify` for signatures of cipher suite ``suite_id``.

    ``crypto``'s own ``start_verify`` if it has one, else the items are
    verified by ``crypto.verify`` when the result is asked for. Use it as a
    context manager (or call :meth:`~PendingVerify.close`): an implementation
    may hold its workers until then.
    """
    start = getattr(crypto, "start_verify", None)
    if start is not None:
        return _Counted(start(suite_id))
    return _Deferred(crypto, suite_id)
