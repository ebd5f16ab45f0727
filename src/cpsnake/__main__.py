import sys

from cpsnake.cli import main

sys.exit(main())
