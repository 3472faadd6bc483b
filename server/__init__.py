"""fedsynth.server: the Flower ServerApp adapter, the validating strategy and round checkpoints."""
