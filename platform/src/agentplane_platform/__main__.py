"""`python -m agentplane_platform`: the `agentplane` command."""

from agentplane_platform.cli import main

main()
