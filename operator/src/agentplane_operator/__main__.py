import sys

from agentplane_operator.cli import main

sys.exit(main())
