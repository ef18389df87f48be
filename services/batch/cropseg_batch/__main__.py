import sys

from cropseg_batch.cli import main

sys.exit(main())
