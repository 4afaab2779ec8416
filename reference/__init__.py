"""The harness: the nn.Transformer side and everything that compares a target with it.

Front doors (this folder):
    cli.py            the ``parity`` command (check, diagnose, zoo, bench), each imported on use
    check.py          ``parity check``: run the equivalence suite on a target, print the table
    pytest_plugin.py  the pytest11 plugin: ``--impl``, ``--as``, profiles, fixtures, the parity report
    api.py            ``check`` and ``diagnose`` for notebooks and scripts (report_html.py: their HTML)

The pipeline, one subpackage per step, each importing only the ones above it in this list:
    builtin/    the built-in side: nn.Transformer's configuration, random weights, the weight bridge
    cases/      cases as plain data: case types, hypothesis strategies, pinned edge cases
    levels/     the component registry: one record per level (built-in, handmade twin, cases, inputs, call)
    targets/    the plug-in contract: what a target is and how it is loaded
    verdict/    the comparison engine, the tolerance policy, the assertion helper
    inference/  a target becomes the engine's candidate for a case; code nobody adapted is resolved here
                (construction, calling, weight map, the configuration it implements)
    catalogue/  the bug catalogue (every known deviation, one key each) and the bug zoo's entries
    diagnose/   whether, where and why a target differs: families, localization, causes, report
    studies/    runs over many cases or targets: calibration, no false alarms, the zoo hunt

docs/architecture.md walks one ``parity check`` and one ``parity diagnose`` through these modules.
"""
