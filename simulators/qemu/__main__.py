"""``python -m simulators.qemu --qmp unix:PATH``: see ``_cli``."""

from ._cli import main

raise SystemExit(main())
