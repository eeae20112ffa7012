import sys

from recall_engine.cli.main import main

sys.exit(main())
