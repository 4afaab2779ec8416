"""Inference: everything that resolves code nobody adapted, so that it can be checked with no adapter.

- ``target``     an inferred target at any level: discovery of the configuration it implements, then the
                 engine's candidate for each drawn case (``candidate``), with the cache of what was inferred
                 per configuration shape (``cache``), the options user code may fix (``options``) and the
                 sizes it really has (``sizes``);
- ``construct``  build the user's class from a level's configuration through its own parameter names
                 (``stacks``: stacks that take a layer);
- ``calling``    how to call it (argument names, layout, masks, outputs; ``masks``: mask conventions);
- ``weightmap``  which built-in tensor each of its parameters holds, verified by running (``record`` traces
                 a forward pass, ``slots`` lists what can be filled, ``maps`` holds and moves the map);
- ``auto``       all of it for one level, the layout decided by the values; ``copying`` copies a model whose
                 closures follow the copy.
"""
