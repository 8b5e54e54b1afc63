import sys

from jobctl.cli import main

sys.exit(main())
