"""``python -m simulators.qemu --qmp unix:PATH``: see :func:`simulators.qemu.main`."""

from . import main

raise SystemExit(main())
