"""Session-wide pytest plugins: the real servers the tests run against (see tests/support/)."""

pytest_plugins = ["support.service_fixtures"]
