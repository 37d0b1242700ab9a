"""The puller: source grammar, transfers and registries against real servers on loopback."""
