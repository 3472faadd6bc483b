"""fedsynth.cli: composition root (command line, Flower process orchestration, demo)."""
