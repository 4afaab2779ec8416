"""Targets: the plug-in contract (what a target is, how it is loaded) and how a target becomes the engine's
candidate for a case (an adapter, a drop-in class, or code resolved by inference)."""
