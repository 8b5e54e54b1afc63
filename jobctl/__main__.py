import sys

from jobctl._cli import main

sys.exit(main())
