import sys

from cropseg_drift.cli import main

sys.exit(main())
