"""The harness: the nn.Transformer side and everything that compares a target with it.

Front doors (this folder):
    cli.py            the ``parity`` command (check, diagnose, zoo, bench), each imported on use
    check.py          ``parity check``: run the equivalence suite on a target, print the table
    pytest_plugin.py  the pytest11 plugin: ``--impl``, ``--as``, profiles, fixtures, the parity report
    api.py            ``check`` and ``diagnose`` for notebooks and scripts

The pipeline, one subpackage per step, each importing only the ones above it in this list:
    builtin/    the built-in side: configuration, the level registry, the weight bridge to handmade
    cases/      cases as plain data: case types, hypothesis strategies, pinned edge cases
    targets/    the plug-in contract, and how a target becomes the engine's candidate for a case
    verdict/    the comparison engine, the tolerance policy, the assertion helper
    inference/  code nobody adapted, resolved: construction, calling, weight map, configuration
    catalogue/  the bug catalogue (every known deviation, one key each) and the bug zoo's entries
    diagnose/   whether, where and why a target differs: families, localization, causes, report
    studies/    runs over many cases or targets: calibration, no false alarms, the zoo hunt

docs/architecture.md walks one ``parity check`` and one ``parity diagnose`` through these modules.
"""
