#!/usr/bin/env python3
"""Spill stress test, the same as ``ray-valkey-spill stress`` (ray_valkey_spill/lab/stress.py).

    python scripts/spill_stress.py --data float64 --baseline filesystem --repeat 3
"""

import sys

from ray_valkey_spill.lab.stress import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
