"""Property-based equivalence tests: handmade (or a plug-in target) against torch.nn.Transformer.

Run with ``pytest equivalence_tests --hypothesis-profile=ci`` or ``parity check``; see conftest.py for the
options (``--impl``, ``--parity-report``, ``--parity-device``) and strategies.py for what is drawn.
"""
