"""``python -m mls_xmpp.chat``: the same as ``mls-xmpp chat``."""

import sys

from .terminal import main

if __name__ == "__main__":
    sys.exit(main())
