"""The `railnet` command (`railnet.cli`) and, under `railnet.dev`, the development tooling."""
