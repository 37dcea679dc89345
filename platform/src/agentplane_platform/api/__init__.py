"""The spec API of agentplane; one subpackage per API version."""
