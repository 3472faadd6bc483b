"""fedsynth.common: schema, encoding, denoiser, schedulers, samplers, DP training core and artifacts (Flower-free)."""
