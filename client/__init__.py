"""fedsynth.client: the site-side Flower ClientApp adapter (DP training happens in fedsynth.common.training)."""
