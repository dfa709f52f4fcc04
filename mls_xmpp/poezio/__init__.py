"""MLS groups in poezio: the poezio plugin ``mls`` (``pip install 'mls-xmpp[poezio]'``).

poezio finds it through the ``poezio_plugins`` entry point ``mls``, which names
:mod:`mls_xmpp.poezio.plugin` (its ``Plugin`` class, an ``E2EEPlugin``); load it
with ``/load mls`` or ``plugins_autoload = mls``. It registers this package's
slixmpp plugin on poezio's own client and shows every group as a MUC tab.
Importing this package does not import poezio.
"""
