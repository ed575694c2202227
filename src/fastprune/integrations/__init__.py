"""Bridges to other frameworks' loaders (imported on demand, so their packages stay optional):
``fastprune.integrations.ffcv.PrunedOrder`` drives ffcv's own Loader with fastprune's strategies."""
