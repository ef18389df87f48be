import sys

from cropseg_storage.cli import main

sys.exit(main())
