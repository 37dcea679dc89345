from agentplane_runtime.cli import main

main()
