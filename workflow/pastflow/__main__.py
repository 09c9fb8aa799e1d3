import sys

from pastflow.cli import main

sys.exit(main())
