import sys

from cropseg_inference.cli import main

sys.exit(main())
