"""The project's pytest front: load the Sunrise plugin (all logic lives in harness/)."""

pytest_plugins = ["harness.pytest_plugin", "pytester"]
