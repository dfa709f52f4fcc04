"""Group parameters carried in the group: the padding multiple ``pad_to``.

Senders pad every application ``Content`` and every PrivateMessage to a
multiple of ``pad_to`` bytes (docs/PROTOCOL.md, Padding), so that sizes say
little about content. Receivers ignore padding, so the value does not decide
whether a message is valid; it is carried in the group so that every member,
and every joiner, pads alike (a member padding differently would stand out by
its sizes). It lives in a GroupContext extension of type
:data:`PARAMS_EXTENSION` (private use range, RFC 9420 §17.3), set by the
creator and changed only by a GroupContextExtensions Commit (which the group
rules govern, :mod:`.rules`). A joiner learns it from the GroupContext of its
Welcome's GroupInfo, a recovering device from the GroupInfo it rejoins with.

Wire format (TLS presentation language, RFC 9420 §2.1)::

    struct {
        uint8 version;      /* 1 */
        uint32 pad_to;      /* 1 to 65536; 1: no padding */
    } GroupParameters;

Without the extension ``pad_to`` is :data:`DEFAULT_PAD_TO` (32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from ..core.codec import U8, U32, Struct
from ..core.errors import DecodeError, PolicyError
from ..core.group.group import Group
from ..core.messages.extensions import Extension, Extensions, find_extension

__all__ = ["DEFAULT_PAD_TO", "MAX_PAD_TO", "PARAMS_EXTENSION", "GroupParameters",
           "follow_parameters", "pad_to_of", "params_extension"]

#: The extension type of :class:`GroupParameters` in the GroupContext (private use range).
PARAMS_EXTENSION = 0xF0E2
#: ``pad_to`` of a group without the extension.
DEFAULT_PAD_TO = 32
#: The largest ``pad_to`` a group may set.
MAX_PAD_TO = 65536
_VERSION = 1


@dataclass(frozen=True)
class GroupParameters(Struct):
    """The group's parameters (see the module documentation for the wire format)."""

    version: Annotated[int, U8] = _VERSION
    pad_to: Annotated[int, U32] = DEFAULT_PAD_TO

    def check(self) -> None:
        """Refuse values this version does not define."""
        if self.version != _VERSION:
            raise PolicyError(f"group parameters version {self.version} is not supported")
        if not 1 <= self.pad_to <= MAX_PAD_TO:
            raise PolicyError(f"group parameters: pad_to={self.pad_to} is outside 1..{MAX_PAD_TO}")


def params_extension(pad_to: int) -> Extension:
    """A GroupContext extension setting ``pad_to``.

    :raises PolicyError: ``pad_to`` is outside 1..:data:`MAX_PAD_TO`.
    """
    params = GroupParameters(pad_to=pad_to)
    params.check()
    return Extension(PARAMS_EXTENSION, params.encode())


def pad_to_of(extensions: Extensions) -> int:
    """The ``pad_to`` a GroupContext's extensions set (:data:`DEFAULT_PAD_TO` without).

    :raises PolicyError: the extension is present but malformed.
    """
    data = find_extension(extensions, PARAMS_EXTENSION)
    if data is None:
        return DEFAULT_PAD_TO
    try:
        params = GroupParameters.decode(data)
    except DecodeError as e:
        raise PolicyError(f"the group parameters do not decode: {e}") from e
    params.check()
    return params.pad_to


def follow_parameters(group: Group) -> int:
    """Make ``group`` pad as its GroupContext says (before it encrypts); its ``pad_to``.

    A malformed extension (which no valid Commit can set, see
    :class:`~mls_xmpp.xmpp.rules.RulesPolicy`) leaves the default.
    """
    try:
        pad_to = pad_to_of(group.state.context.extensions)
    except PolicyError:
        pad_to = DEFAULT_PAD_TO
    if group.config.pad_to != pad_to:
        group.config = replace(group.config, pad_to=pad_to)
    return pad_to
