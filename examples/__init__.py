"""Hand-written Transformers brought to the harness, each with its plug-in (``parity diagnose examples.X:Y``)."""
