"""The project's pytest front. The Sunrise plugin itself is installed (entry point `pytest11`, see
pyproject.toml), so its options parse before rootdir discovery; all its logic lives in harness/."""

pytest_plugins = ["pytester"]
