"""``parity diagnose MODULE:OBJECT [--as LEVEL]``: whether, where and why a hand-written piece differs from PyTorch's.

Steps, each in its own module (``pipeline`` runs them in order and is the command's entry):

- families.py    a base configuration the target runs, then one option or mask kind varied at a time from
                 it (variations.py); a verdict per family (the engine and the suite's tolerance policy); what
                 check declines is not supported here too;
- search.py      every family equivalent: check's own search (pinned cases, the level's strategy, float64);
- measure.py     what values could not decide about an inferred target: its layout, the options it fixes;
- findings.py    the observations, randomness in eval, the family the map reaches, the causes merged;
- localize.py    the first diverging submodule (also the first NaN/inf, or the module that raised),
                 propagated and isolated (hooks.py records copies; mapping.py: an adapter's ``submodules()``,
                 a drop-in's names, else the inferred weight map, one site possibly several modules; owners.py:
                 a layer whose sums are the caller's is set aside, not read as the layer's output);
- gradients.py   every output agrees but gradients differ: the first site whose input gradient differs, and the
                 norm formula whose gradient is the target's;
- crashes.py     each crashing family as a finding, with where it starts;
- probes.py      likely causes from the whole outputs: handmade with deviations from the bug catalogue
                 (reference/catalogue) planted, searched; dropout in eval: the target run twice; a crash:
                 handmade with a deviation crashing the same way;
- place.py       causes measured at the place that differs: the catalogue and fits (fits.py, fits_inputs.py,
                 fits_heads.py: the order heads are merged in, sources.py: what a place is fed, sums.py) there;
- structure.py   a target no weight map pairs: its structure measured (one projection shared across heads);
- unresolved.py  a target the resolver cannot resolve: UNRESOLVED with check's reason, not a crash;
- reproducer.py  hypothesis' minimal failing example, as a standalone script + tensors (whole models);
- report.py      text (text.py) and ``--json``; plot.py: the picture (``--plot``, matplotlib, optional).

Exit status: 0 equivalent, 1 divergent / crashes / not supported, 2 bad arguments or target spec.
"""
