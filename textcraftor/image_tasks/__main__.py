"""``python -m textcraftor.image_tasks``: see ``textcraftor.image_tasks.run``."""

import sys

from textcraftor.image_tasks.run import main

sys.exit(main())
