import sys

from cropseg_stack.cli import main

sys.exit(main())
