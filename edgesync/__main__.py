import sys

from edgesync.cli import main

sys.exit(main())
