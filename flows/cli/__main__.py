"""`python -m flows.cli ...`"""

import sys

from flows.cli.commands import main

sys.exit(main())
