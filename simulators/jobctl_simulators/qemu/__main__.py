"""``python -m jobctl_simulators.qemu --qmp unix:PATH``: see :func:`jobctl_simulators.qemu.main`."""

from . import main

raise SystemExit(main())
