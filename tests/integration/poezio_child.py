"""poezio as the poezio tests start it: ``python poezio_child.py -f CONFIG -d LOG``.

Two switches poezio has no option for:

* as root (CI containers) poezio refuses to start ("Please do not run poezio
  as root."); its check is ``os.geteuid()`` in ``poezio.poezio.main()``;
* the test Prosody speaks plaintext on loopback, and slixmpp sends no SCRAM
  password without TLS unless ``unencrypted_scram`` is set (poezio's
  ``force_encryption = false`` does not set it).
"""

import os
import sys

if os.geteuid() == 0:
    os.geteuid = lambda: 65534

from slixmpp.features.feature_mechanisms.mechanisms import FeatureMechanisms  # noqa: E402

FeatureMechanisms.default_config = dict(FeatureMechanisms.default_config, unencrypted_scram=True)

from poezio.__main__ import run  # noqa: E402

sys.argv[0] = "poezio"
sys.exit(run())
