"""``python -m ray_valkey_spill.cli``: the same as the ``ray-valkey-spill`` command."""

import sys

from . import main

sys.exit(main())
