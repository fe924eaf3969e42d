import sys

from quantforge.cli.main import main

sys.exit(main())
