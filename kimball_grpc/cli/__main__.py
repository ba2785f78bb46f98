"""``python -m kimball_grpc.cli``: the ``kimball`` command."""

from __future__ import annotations

import sys

from kimball_grpc.cli.main import main

sys.exit(main())
