"""Property-based equivalence tests: handmade (or a plug-in target) against torch.nn.Transformer.

Run with ``pytest equivalence_tests --hypothesis-profile=ci`` or ``parity check``; the options (``--impl``,
``--as``, ``--parity-report``, ``--parity-device``) are the plugin's (reference/pytest_plugin.py), and what is
drawn is reference/cases/strategies.py.
"""
