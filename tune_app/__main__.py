import sys

from tune_app.cli import main

sys.exit(main())
